//! The actor that owns the process table: it applies ring-buffer events in order, refreshes
//! the fast-changing numbers from the task iterator on demand (never older than the staleness
//! bound), rescans when the kernel side counts a loss, and answers queries with immutable
//! snapshots.

mod actor;
pub mod reader;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use self::actor::TaskSource;
use self::actor::{Actor, Clock, Pass, SystemClock, Wiring};
use crate::{
    groups::{GroupReport, Ledger},
    kernel::KernelEvent,
    procfs,
    sys::clock::{boot_ns, ns_per_tick},
    table::{Change, Exited, Live, Process, ProcessTable, TableCounters},
};

/// An immutable view of the table at one moment.
pub struct Snapshot {
    pub version: u64,
    /// Boot-clock ns the numbers are as of: every process that ran (or was woken, or moved to
    /// another cgroup) before it has been read since, by a refresh of those processes or by a
    /// pass over every task.
    pub refreshed_at: u64,
    /// Boot-clock ns of the last pass over every task, which also brings up to date what other
    /// processes change in a process that does not run (pages reclaimed from it, its priority,
    /// its limits): those are as of then.
    pub full_at: u64,
    /// The live processes (in chunks shared with the table, see `Live`) and the exited ring,
    /// shared by the snapshots of one table version (a refresh that changed no process makes
    /// a snapshot with a newer `refreshed_at` only).
    pub processes: Live,
    pub exited: Arc<[Exited]>,
    /// The unfiltered `/v1/processes` body, rendered once per table version, in parts.
    pub listing_json: Arc<OnceLock<Vec<bytes::Bytes>>>,
}

impl Snapshot {
    /// A snapshot of `processes` and `exited` whose numbers are as of `at`.
    pub fn new(
        version: u64,
        at: u64,
        processes: impl IntoIterator<Item = Arc<Process>>,
        exited: Vec<Exited>,
    ) -> Self {
        Self {
            version,
            refreshed_at: at,
            full_at: at,
            processes: processes.into_iter().collect(),
            exited: exited.into(),
            listing_json: Arc::default(),
        }
    }

    pub fn get(&self, pid: u32) -> Option<&Arc<Process>> {
        self.processes.get(&pid)
    }
}

/// The agent's own counters, for `/v1/stats` and `/metrics`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentStats {
    pub events_received: u64,
    pub events_undecodable: u64,
    /// Rescans triggered by a kernel-side loss counter moving.
    pub rescans: u64,
    /// Kernel-side counters, summed over CPUs.
    pub kernel: std::collections::BTreeMap<&'static str, u64>,
    pub table: TableCounters,
    pub live_processes: usize,
    /// Snapshot requests answered without the actor (fast path) and sent to it.
    pub fast_path_hits: u64,
    pub fast_path_misses: u64,
    /// Reads of one process's threads that stood in for a pass (see `State::process`).
    pub process_reads: u64,
    /// The last task-iterator pass: how long it took and how many tasks it returned.
    pub last_iterator_us: u64,
    pub last_iterator_tasks: usize,
    /// Refreshes that read only the processes that ran since the last one (see `Ran`), the
    /// processes they read, and the last one's time and reads.
    pub partial_refreshes: u64,
    pub partial_reads: u64,
    pub last_partial_us: u64,
    pub last_partial_processes: usize,
    pub exited_retained: usize,
    /// Process-map entries at the last sweep (every 10 s while anyone asks for numbers; a
    /// count per scrape would cost a syscall per entry).
    pub bpf_map_entries: usize,
    /// Of those, entries with no live process in the table: zero at rest, else a leak.
    pub bpf_map_orphans: usize,
    /// Process-map entries the periodic sweep had to drop (their process was gone).
    pub map_gc_dropped: u64,
    /// Times the ring reader found the ring empty long enough to stop polling it, and drains
    /// the kernel woke it for (the first record after such a lull, or a backlog).
    pub reader_parks: u64,
    pub reader_woken: u64,
}

/// argv and exe read for (pid, start) of a process that predates the agent.
pub(crate) struct Identity {
    pid: u32,
    start: u64,
    cmdline: Vec<u8>,
    exe: Option<Vec<u8>>,
}

pub(crate) enum Msg {
    Events(Vec<KernelEvent>),
    Snapshot {
        max_age: Duration,
        reply: oneshot::Sender<Arc<Snapshot>>,
    },
    /// A pass of the task iterator has finished.
    Refreshed(Pass),
    Identities(Vec<Identity>),
    /// Periodic: loss check, and refresh-ahead while clients are polling.
    Tick,
    /// Reads of single processes have cost about a pass: start one.
    Ahead,
    Stats(oneshot::Sender<AgentStats>),
    Groups(oneshot::Sender<GroupReport>),
}

/// Above this, a pass over every task costs more than callers that share passes should wait
/// for: 50 ms is about 20,000 tasks here; at 100,000 a pass took over half a second, and a
/// `ps` on a `cache=` mount whose every lookup waited for one took more than ten minutes.
const SHARED_PASS_LIMIT_US: u64 = 50_000;

/// What lets a reader use the latest snapshot without asking the actor, yet never miss an
/// event: the snapshot is current iff it is the table's latest version, no decoded records are
/// on their way to the actor, and the kernel's ring buffer is empty.
#[derive(Default)]
struct Latest {
    snapshot: std::sync::RwLock<Option<Arc<Snapshot>>>,
    version: std::sync::atomic::AtomicU64,
    /// Records the ring reader has handed over and the actor has not applied yet.
    in_flight: std::sync::atomic::AtomicU64,
    ring: OnceLock<Arc<crate::kernel::RingFill>>,
    /// Answers given by `current()` without the actor, and the ones it had to decline.
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    /// Reads one process's threads, for `process_within`; `None` where the kernel (< 6.1)
    /// cannot narrow a task iterator to one process.
    reader: OnceLock<Option<crate::kernel::TaskReader>>,
    /// Processes read on their own since the snapshot's numbers went stale (see `Overlay`).
    overlays: Mutex<Overlays>,
    process_reads: std::sync::atomic::AtomicU64,
    /// How long the last pass over every task took, in µs (`State::process`).
    pub(crate) pass_us: std::sync::atomic::AtomicU64,
    /// Whether a refresh can read only the processes that ran (`Ran`), and so be shared at
    /// any size.
    partial: std::sync::atomic::AtomicBool,
    /// When a control command last changed each process (see `State::touch`).
    touched: Mutex<std::collections::HashMap<u32, u64>>,
    /// Whether a client asked for numbers within the bound lately, so the actor's ticker
    /// keeps its short period for the read-ahead; else it ticks once a second. `tick_now`
    /// wakes a ticker asleep in the long period when this turns on.
    quick_ticks: std::sync::atomic::AtomicBool,
    tick_now: tokio::sync::Notify,
    /// The ring reader's `AgentStats::reader_parks` and `reader_woken`.
    reader_parks: std::sync::atomic::AtomicU64,
    reader_woken: std::sync::atomic::AtomicU64,
}

/// The actor's tick while nobody polls faster than the bound.
const IDLE_TICK: Duration = Duration::from_secs(1);

impl Latest {
    /// The actor's ticks at the short period from now on, starting at once.
    fn quicken_ticks(&self) {
        if !self
            .quick_ticks
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.tick_now.notify_one();
        }
    }
}

/// One process's numbers, read on their own: an open of one file in a table whose numbers are
/// stale costs a read of that process's threads, not a pass over the host (26 ms at 10,000
/// processes, waited for by the open).
struct Overlay {
    /// The revision of the table's entry the numbers were laid over: a later event (an exec,
    /// an exit) makes it another entry, and the overlay void.
    base_rev: u64,
    read_at: u64,
    process: Arc<Process>,
}

#[derive(Default)]
struct Overlays {
    by_pid: std::collections::HashMap<u32, Overlay>,
    /// The snapshot (by `full_at`) whose stale numbers the reads below stood in for.
    epoch: u64,
    reads: usize,
}

/// A pass costs about as much as one read of a single process per this many processes (at
/// 3,000 and 10,000 processes a pass costs ~2.6 µs a process, a read of one ~8 µs). Once
/// the reads since the numbers went stale have cost a pass, a pass is started ahead: never
/// more than twice the cheaper of the two, whatever the reader does next, and a reader of
/// every process, like `ps`, gets whole passes.
const OVERLAY_READS_PER_PASS: usize = 3;
/// Overlays kept before the stale ones are swept.
const OVERLAYS_KEPT: usize = 4096;

/// A cheap handle to the actor.
#[derive(Clone)]
pub struct State {
    latest: Arc<Latest>,
    tx: mpsc::Sender<Msg>,
    /// Queries go through the ring-buffer reader, which drains the ring before forwarding
    /// them: an answer reflects every event that happened before the question.
    queries: mpsc::Sender<Msg>,
    events: broadcast::Sender<Arc<Change>>,
    pub max_age: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the process table has shut down")]
pub struct Gone;

impl State {
    /// A snapshot whose numbers are at most `max_age` old.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, Gone> {
        self.snapshot_within(self.max_age).await
    }

    pub async fn snapshot_within(&self, max_age: Duration) -> Result<Arc<Snapshot>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.queries
            .send(Msg::Snapshot { max_age, reply })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub async fn stats(&self) -> Result<AgentStats, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Stats(reply)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// The per-group report for `/metrics`, reconciled with the table as it is now. Goes
    /// through the ring reader like a snapshot, so every exit before the question is counted.
    pub async fn groups(&self) -> Result<GroupReport, Gone> {
        let (reply, rx) = oneshot::channel();
        self.queries
            .send(Msg::Groups(reply))
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.events.subscribe()
    }

    /// Feeds decoded ring-buffer records to the table.
    pub async fn push_events(&self, events: Vec<KernelEvent>) -> Result<(), Gone> {
        use std::sync::atomic::Ordering;
        self.latest
            .in_flight
            .fetch_add(events.len() as u64, Ordering::AcqRel);
        self.tx.send(Msg::Events(events)).await.map_err(|_| Gone)
    }

    /// Lets the fast path see whether records are waiting in the kernel's ring buffer.
    pub fn watch_ring(&self, ring: Arc<crate::kernel::RingFill>) {
        let _ = self.latest.ring.set(ring);
    }

    /// The latest snapshot, if it is provably current (see `Latest`) and its numbers are at
    /// most `max_age` old; `None` means: ask the actor. Costs a few atomic loads, no round trip.
    pub fn current(&self, max_age: Duration) -> Option<Arc<Snapshot>> {
        use std::sync::atomic::Ordering;
        let l = &self.latest;
        let found = (|| {
            let ring = l.ring.get()?;
            if l.in_flight.load(Ordering::Acquire) != 0 || ring.used() != 0 {
                return None;
            }
            let snap = l.snapshot.read().ok()?.clone()?;
            let fresh = boot_ns().saturating_sub(snap.refreshed_at) <= max_age.as_nanos() as u64;
            (snap.version == l.version.load(Ordering::Acquire) && fresh).then_some(snap)
        })();
        let counter = if found.is_some() { &l.hits } else { &l.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// `pid`'s entry in `snap` (which must be current: every event applied) with numbers at
    /// most `max_age` old: the entry itself if the snapshot's numbers are fresh enough, else
    /// the entry with its threads read again on their own. `None`: the process ended or its
    /// pid was reused since, or the kernel cannot read one process, and only a pass can tell.
    fn process_within(&self, snap: &Snapshot, pid: u32, max_age: Duration) -> Option<Arc<Process>> {
        let base = snap.get(pid)?;
        let now = boot_ns();
        let bound = max_age.as_nanos() as u64;
        let l = &self.latest;
        let changed = l
            .touched
            .lock()
            .ok()
            .and_then(|t| t.get(&pid).copied())
            .unwrap_or(0);
        let fresh = |read_at: u64| now.saturating_sub(read_at) <= bound && read_at >= changed;
        // A question about one process gets every number within the bound, what other
        // processes change in it included: only a pass reads those for every process.
        if fresh(snap.full_at) && !base.tasks.is_empty() {
            return Some(base.clone());
        }
        if let Ok(o) = l.overlays.lock()
            && let Some(o) = o.by_pid.get(&pid)
            && o.base_rev == base.rev
            && fresh(o.read_at)
        {
            return Some(o.process.clone());
        }
        let reader = l.reader.get()?.as_ref()?;
        let read_at = boot_ns();
        let records = match reader.process(pid) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pid, "reading one process's tasks: {e}");
                return None;
            }
        };
        l.process_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let process = crate::table::refreshed(base, records, read_at)?;
        let Ok(mut o) = l.overlays.lock() else {
            return Some(process);
        };
        if o.epoch != snap.full_at {
            o.epoch = snap.full_at;
            o.reads = 0;
        }
        // A pass ahead serves questions it can answer; one that wants numbers read now (a
        // never-stale open) never takes a pass's, so its reads do not call for one.
        if bound > 0 {
            o.reads += 1;
        }
        if bound > 0 && o.reads == (snap.processes.len() / OVERLAY_READS_PER_PASS).max(16) {
            // Demand enough for a pass: start one ahead; reads go on meanwhile.
            let _ = self.tx.try_send(Msg::Ahead);
        }
        if o.by_pid.len() >= OVERLAYS_KEPT {
            o.by_pid
                .retain(|_, v| now.saturating_sub(v.read_at) <= bound);
        }
        o.by_pid.insert(
            pid,
            Overlay {
                base_rev: base.rev,
                read_at,
                process: process.clone(),
            },
        );
        Some(process)
    }

    /// The table as it is now (every event applied) and `pid`'s entry in it with numbers at
    /// most `max_age` old; `None` if there is no such process. A stale entry is brought up
    /// to date on its own (see `Overlay`), never by waiting for a pass over every task (at
    /// 100,000 processes one takes over half a second); the answer's numbers are then newer
    /// than the table's record, whose revision a `cache=` mount stamps, so its ticker
    /// invalidates when the record catches up.
    /// `share`: a caller that asks about many processes at once (a `cache=` mount under `ps`)
    /// waits for a refresh instead: one of what ran where the kernel marks it, else a pass
    /// while passes are cheap (one costs less than a few hundred reads of one process); it
    /// reads on its own once they are not.
    pub async fn process(
        &self,
        pid: u32,
        max_age: Duration,
        share: bool,
    ) -> Result<(Arc<Snapshot>, Option<Arc<Process>>), Gone> {
        use std::sync::atomic::Ordering;
        // Shared refreshes of what ran cost little at any size; passes only while they are
        // cheap.
        let l = &self.latest;
        let alone = !share
            || (!l.partial.load(Ordering::Relaxed)
                && l.pass_us.load(Ordering::Relaxed) > SHARED_PASS_LIMIT_US);
        let wanted = if alone { Duration::MAX } else { max_age };
        let mut snap = match self.current(wanted) {
            Some(s) => s,
            None => self.snapshot_within(wanted).await?,
        };
        match snap.get(pid) {
            None => return Ok((snap, None)),
            Some(p) if !alone && !p.tasks.is_empty() => {
                let p = p.clone();
                return Ok((snap, Some(p)));
            }
            Some(_) if alone => {
                if let Some(p) = self.process_within(&snap, pid, max_age) {
                    return Ok((snap, Some(p)));
                }
            }
            Some(_) => {}
        }
        // Ended, or its pid reused, since the events we have (or this kernel cannot read one
        // process): a pass settles it. A process born since the last one has no numbers
        // until the next.
        for bound in [max_age, Duration::ZERO] {
            snap = self.snapshot_within(bound).await?;
            if snap.get(pid).is_none_or(|p| !p.tasks.is_empty()) {
                break;
            }
        }
        let p = snap.get(pid).cloned();
        Ok((snap, p))
    }

    /// `pid` was just changed by a control command (stopped, resumed, its memory written):
    /// its numbers from before do not count as fresh, so a read after the command returns
    /// shows its effect, however long the staleness bound.
    pub fn touch(&self, pid: u32) {
        let now = boot_ns();
        let bound = self.max_age.as_nanos() as u64;
        if let Ok(mut t) = self.latest.touched.lock() {
            if t.len() >= OVERLAYS_KEPT {
                // Past the bound, the numbers from before a command are stale anyway.
                t.retain(|_, at| now.saturating_sub(*at) <= bound);
            }
            t.insert(pid, now);
        }
    }

    /// A snapshot at most `max_age` old: from the fast path when it is current, else from the
    /// actor.
    pub async fn snapshot_fast(&self) -> Result<Arc<Snapshot>, Gone> {
        match self.current(self.max_age) {
            Some(s) => Ok(s),
            None => self.snapshot().await,
        }
    }

    /// Passes on a query the ring reader held until it had drained the ring.
    pub(crate) async fn forward(&self, msg: Msg) -> Result<(), Gone> {
        self.tx.send(msg).await.map_err(|_| Gone)
    }
}

/// Renders whatever a fresh snapshot is likely to be asked for, off the actor.
pub type Prewarm = Arc<dyn Fn(&Snapshot) + Send + Sync>;

pub struct Config {
    pub exited_cap: usize,
    pub max_age: Duration,
    pub loss_check: Duration,
    pub prewarm: Option<Prewarm>,
    /// Per-group accounting for `/metrics`: fed every change so exits between scrapes count.
    pub groups: Ledger,
}

/// The questions asked of the table, which the ring reader passes on once it has drained
/// every record before them ([`reader::run`]).
pub struct Queries(mpsc::Receiver<Msg>);

/// Starts the actor. The initial backfill is done before this returns, so the first query
/// already sees every process; events that raced the backfill are applied after it in order.
/// The returned receiver carries queries for the ring reader to forward (see `State`).
pub fn spawn<K: TaskSource>(
    kernel: Arc<Mutex<K>>,
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(State, Queries)> {
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let (queries, queries_rx) = mpsc::channel::<Msg>(1024);
    let (events, _) = broadcast::channel(8192);
    let latest = Arc::new(Latest::default());
    let state = State {
        latest: latest.clone(),
        queries,
        tx: tx.clone(),
        events: events.clone(),
        max_age: cfg.max_age,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut table = ProcessTable::new(cfg.exited_cap);
    let ns_per_tick = ns_per_tick();

    // Backfill synchronously: the hooks are already attached, so anything that starts from
    // here on is in the ring buffer, and the snapshot/event ordering rules reconcile the two;
    // and what runs from here on is marked for the first refresh (the pass reads the rest).
    let ran = kernel.lock().expect("kernel lock").ran();
    if let Some(r) = &ran {
        r.clear();
    }
    latest
        .partial
        .store(ran.is_some(), std::sync::atomic::Ordering::Relaxed);
    let started = clock.boot_ns();
    let t0 = std::time::Instant::now();
    // Without giving processes their process-map entries: the sweep right after does that
    // (`Actor::start_sweep`), off the path to a whole table. Meanwhile a fork of a process
    // without one still inherits its argv and exe, from the table.
    let mut gather = crate::table::Gather::default();
    let tasks = kernel
        .lock()
        .expect("kernel lock")
        .tasks(false, &mut |r| gather.push(r))?;
    let t1 = t0.elapsed();
    let pids: std::collections::HashSet<u32> = gather.tgids().collect();
    let found = gather.found_where(|_, _, _| true);
    let seen: Vec<u32> = found.iter().map(|f| f.pid).collect();
    let needs = table.apply_found(started, found, &seen, true, &|_, _| false);
    table.forget_tombstones_before(started);
    let t2 = t0.elapsed();
    // argv and exe of every process that predates the agent (all of them, at start) are read
    // from /proc, and the processes the iterator cannot see found there, side by side: at
    // 100,000 processes the reads alone took ~0.9 s of a ~2 s start.
    let backfilled = wanted(&table, needs);
    let (extra, identities) = std::thread::scope(|s| {
        let extra = s.spawn(|| procfs_missing(&pids, ns_per_tick).0);
        let identities = read_identities(backfilled);
        (extra.join().unwrap_or_default(), identities)
    });
    let t3 = t0.elapsed();
    for i in identities {
        table.set_identity(i.pid, i.start, i.cmdline, i.exe);
    }
    for rec in &extra {
        table.upsert_procfs(rec, started);
    }
    let wanted_extra = wanted(&table, extra.iter().map(|r| r[0].tgid).collect());
    for i in read_identities(wanted_extra) {
        table.set_identity(i.pid, i.start, i.cmdline, i.exe);
    }
    tracing::debug!(
        pass_ms = t1.as_millis() as u64,
        apply_ms = (t2 - t1).as_millis() as u64,
        identities_ms = (t3 - t2).as_millis() as u64,
        "backfill"
    );
    tracing::info!(
        processes = table.live().len(),
        from_procfs = extra.len(),
        "backfilled"
    );
    tracing::debug!(
        tasks,
        bytes = table
            .live()
            .iter()
            .map(|p| p.tasks.encoded_len())
            .sum::<usize>(),
        "task records kept"
    );

    // Tried once on ourselves: a kernel before 6.1 refuses a task iterator narrowed to one
    // process, and then every stale number waits for a pass, as before.
    let reader = kernel
        .lock()
        .expect("kernel lock")
        .task_reader()
        .and_then(|r| r.process(std::process::id()).map(|_| r));
    let _ = latest.reader.set(
        reader
            .inspect_err(|e| tracing::warn!("no one-process task reads: {e}"))
            .ok(),
    );
    let mut stats = AgentStats::default();
    if let Ok(pids) = kernel.lock().expect("kernel lock").map_pids() {
        actor::map_stats(&mut stats, &pids, &table);
    }

    let ticker_tx = tx.clone();
    let tick = (cfg.max_age / 2).clamp(Duration::from_millis(5), cfg.loss_check);
    // Losses are checked as records arrive too (`Actor::on_events`); this only bounds how
    // late a loss that comes with no record at all is noticed.
    let (idle_tick, ticker_latest) = (cfg.loss_check.max(IDLE_TICK), latest.clone());
    let wiring = Wiring {
        latest,
        tx,
        passes: state.queries.clone(),
        events,
        ran,
    };
    let mut actor = Actor::new(kernel, clock, wiring, cfg, table, stats, started);
    tokio::spawn(async move {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            // 20 wake-ups a second cost an agent nobody polls (idle, or scraped every 15 s)
            // CPU for nothing; a client polling within the bound wakes the ticker at once.
            let quick = ticker_latest.quick_ticks.load(Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(if quick { tick } else { idle_tick }) => {}
                _ = ticker_latest.tick_now.notified() => {}
            }
            if ticker_tx.send(Msg::Tick).await.is_err() {
                break;
            }
        }
    });

    tokio::spawn(async move {
        actor.start_sweep();
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = shutdown.changed() => break,
            };
            actor.handle(msg);
        }
        tracing::debug!("process table actor stopped");
    });
    Ok((state, Queries(queries_rx)))
}

/// (pid, start) of each of `pids` in the table: whose argv and exe to read.
pub(crate) fn wanted(table: &ProcessTable, pids: Vec<u32>) -> Vec<(u32, u64)> {
    pids.into_iter()
        .filter_map(|pid| table.get(pid).map(|p| (pid, p.start_boottime)))
        .collect()
}

/// argv and exe of each process in `wanted`, read from /proc, on as many threads as there
/// are CPUs when there are many.
pub(crate) fn read_identities(wanted: Vec<(u32, u64)>) -> Vec<Identity> {
    let read = |list: &[(u32, u64)]| -> Vec<Identity> {
        list.iter()
            .map(|&(pid, start)| {
                let (cmdline, exe) = procfs::identity(pid);
                Identity {
                    pid,
                    start,
                    cmdline,
                    exe,
                }
            })
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if wanted.len() < 1024 || threads == 1 {
        return read(&wanted);
    }
    let per = wanted.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = wanted
            .chunks(per)
            .map(|c| s.spawn(move || read(c)))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Processes /proc lists that the iterator did not return (seen here: pid 1 of a sandbox
/// whose init is outside our reach), read from /proc instead.
fn procfs_missing(
    seen: &std::collections::HashSet<u32>,
    ns_per_tick: u64,
) -> (Vec<Vec<bpfproc_common::TaskRecord>>, Vec<u32>) {
    let missing: Vec<u32> = procfs::pids()
        .into_iter()
        .filter(|p| !seen.contains(p))
        .collect();
    let recs = missing
        .iter()
        .map(|&pid| procfs::records(pid, ns_per_tick))
        .filter(|r| !r.is_empty())
        .collect();
    (recs, missing)
}

#[cfg(test)]
mod tests;

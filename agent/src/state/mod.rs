//! The actor that owns the process table: it applies ring-buffer events in order, refreshes
//! the fast-changing numbers from the task iterator on demand (never older than the staleness
//! bound), rescans when the kernel side counts a loss, and answers queries with immutable
//! snapshots.

pub mod reader;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bpfproc_common::stat;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::{
    groups::{GroupReport, Ledger},
    kernel::{Kernel, KernelEvent},
    procfs,
    sys::clock::{boot_ns, clock_ticks},
    table::{Change, Exited, Process, ProcessTable, TableCounters},
};

/// An immutable view of the table at one moment.
pub struct Snapshot {
    pub version: u64,
    /// Boot-clock ns the numbers were read at.
    pub refreshed_at: u64,
    pub processes: Vec<Arc<Process>>,
    pub exited: Vec<Exited>,
    /// The unfiltered `/v1/processes` body, rendered once per snapshot.
    pub listing_json: OnceLock<bytes::Bytes>,
}

impl Snapshot {
    pub fn get(&self, pid: u32) -> Option<&Arc<Process>> {
        self.processes
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .map(|i| &self.processes[i])
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
    pub exited_retained: usize,
    /// Process-map entries at the last sweep (every 10 s while anyone asks for numbers; a
    /// count per scrape would cost a syscall per entry).
    pub bpf_map_entries: usize,
    /// Of those, entries with no live process in the table: zero at rest, else a leak.
    pub bpf_map_orphans: usize,
    /// Process-map entries the periodic sweep had to drop (their process was gone).
    pub map_gc_dropped: u64,
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
    Refreshed {
        started: u64,
        /// How long the iterator pass took.
        took_us: u64,
        records: Vec<bpfproc_common::TaskRecord>,
        procfs: Vec<Vec<bpfproc_common::TaskRecord>>,
        procfs_gone: Vec<u32>,
        gc_dropped: usize,
        /// After a sweep, the process map's keys.
        map_pids: Option<Vec<u32>>,
    },
    Identities(Vec<Identity>),
    /// Periodic: loss check, and refresh-ahead while clients are polling.
    Tick,
    /// Reads of single processes have cost about a pass: start one.
    Ahead,
    Stats(oneshot::Sender<AgentStats>),
    Groups(oneshot::Sender<GroupReport>),
}

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
    /// When a control command last changed each process (see `State::touch`).
    touched: Mutex<std::collections::HashMap<u32, u64>>,
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
    /// The snapshot (by `refreshed_at`) whose stale numbers the reads below stood in for.
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
        if fresh(snap.refreshed_at) && !base.tasks.is_empty() {
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
        if o.epoch != snap.refreshed_at {
            o.epoch = snap.refreshed_at;
            o.reads = 0;
        }
        o.reads += 1;
        if o.reads == (snap.processes.len() / OVERLAY_READS_PER_PASS).max(16) {
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
    /// most `max_age` old; `None` if there is no such process. `alone`: a stale entry is
    /// brought up to date on its own (see `Overlay`) rather than by a pass; the answer's
    /// revision is then not the table's (a `cache=` mount, which compares the two, passes).
    pub async fn process(
        &self,
        pid: u32,
        max_age: Duration,
        alone: bool,
    ) -> Result<(Arc<Snapshot>, Option<Arc<Process>>), Gone> {
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

/// While some client asked within this long, fresh snapshots are pre-rendered for it.
const HOT_FOR: Duration = Duration::from_secs(2);
/// The process map is swept for entries that outlived their process this often.
const GC_EVERY: Duration = Duration::from_secs(10);

/// Starts the actor. The initial backfill is done before this returns, so the first query
/// already sees every process; events that raced the backfill are applied after it in order.
/// The returned receiver carries queries for the ring reader to forward (see `State`).
/// The questions asked of the table, which the ring reader passes on once it has drained
/// every record before them ([`reader::run`]).
pub struct Queries(mpsc::Receiver<Msg>);

pub fn spawn(
    kernel: Arc<Mutex<Kernel>>,
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
    // A finished pass reaches the actor through the ring reader, which drains the ring first:
    // a process that exited before the pass started has its exit record applied before the
    // pass shows it gone, so its exit status is never taken for lost.
    let passes = state.queries.clone();
    let mut table = ProcessTable::new(cfg.exited_cap);
    let mut ledger = cfg.groups;
    let ns_per_tick = 1_000_000_000 / clock_ticks();

    // Backfill synchronously: the hooks are already attached, so anything that starts from
    // here on is in the ring buffer, and the snapshot/event ordering rules reconcile the two.
    let started = boot_ns();
    let records = kernel.lock().expect("kernel lock").tasks(true)?;
    let needs = table.apply_snapshot(started, &records, true);
    let (extra, _) = procfs_missing(&records, ns_per_tick);
    for rec in &extra {
        table.upsert_procfs(rec, started);
    }
    for pid in needs.into_iter().chain(extra.iter().map(|r| r[0].tgid)) {
        fill_identity(&mut table, pid);
    }
    tracing::info!(
        processes = table.live().len(),
        from_procfs = extra.len(),
        "backfilled"
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
        map_stats(&mut stats, &pids, &table);
    }
    let mut last_refresh = started;
    let mut refreshing = false;
    let mut waiters: Vec<(Duration, oneshot::Sender<Arc<Snapshot>>)> = Vec::new();
    let mut cached: Option<Arc<Snapshot>> = None;
    let mut last_losses = 0u64;
    let mut last_loss_check = std::time::Instant::now();
    let mut last_query = std::time::Instant::now() - HOT_FOR;
    // Whether the current numbers have been asked for since they were read: refreshing ahead
    // only when they were keeps the iterator's cost proportional to demand (an idle agent, or
    // one scraped every 15 s, runs no extra passes).
    let mut demanded = false;
    let mut last_gc = std::time::Instant::now();
    let max_age = cfg.max_age;
    let prewarm = cfg.prewarm;

    let ticker_tx = tx.clone();
    let tick = (max_age / 2).clamp(Duration::from_millis(5), cfg.loss_check);
    let loss_check = cfg.loss_check;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if ticker_tx.send(Msg::Tick).await.is_err() {
                break;
            }
        }
    });

    tokio::spawn(async move {
        // One pass at a time; the periodic sweep rides along when it is due.
        macro_rules! start_pass {
            () => {
                if !refreshing {
                    refreshing = true;
                    let gc = take_gc(&mut last_gc);
                    start_refresh(kernel.clone(), passes.clone(), &table, ns_per_tick, gc);
                }
            };
        }
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = shutdown.changed() => break,
            };
            match msg {
                Msg::Events(batch) => {
                    stats.events_received += batch.len() as u64;
                    let n = batch.len() as u64;
                    for ev in &batch {
                        if let Some(change) = table.apply(ev) {
                            ledger.apply(&change);
                            let _ = events.send(Arc::new(change));
                        }
                    }
                    // Publish the new version before declaring the records applied, so a fast
                    // reader that sees nothing in flight also sees that its snapshot is old.
                    latest
                        .version
                        .store(table.version(), std::sync::atomic::Ordering::Release);
                    latest
                        .in_flight
                        .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
                }
                Msg::Snapshot {
                    max_age: asked,
                    reply,
                } => {
                    // Refreshing ahead keeps numbers within the agent's bound for those who
                    // ask for it (or tighter). A question that takes numbers of any age (a
                    // listing, a process's existence) or older ones (a `cache=` mount, whose
                    // ticker refreshes for it) does not ask for it.
                    if asked <= max_age {
                        last_query = std::time::Instant::now();
                        demanded = true;
                    }
                    let age = Duration::from_nanos(boot_ns().saturating_sub(last_refresh));
                    if age <= asked {
                        let _ = reply.send(current(&table, &mut cached, last_refresh, &latest));
                    } else {
                        waiters.push((asked, reply));
                        start_pass!();
                    }
                }
                Msg::Refreshed {
                    started,
                    took_us,
                    records,
                    procfs,
                    procfs_gone,
                    gc_dropped,
                    map_pids,
                } => {
                    refreshing = false;
                    stats.map_gc_dropped += gc_dropped as u64;
                    stats.last_iterator_us = took_us;
                    stats.last_iterator_tasks = records.len();
                    if records.is_empty() {
                        // The iterator failed: answer with what we have rather than hang.
                        let snap = current(&table, &mut cached, last_refresh, &latest);
                        for (_, w) in waiters.drain(..) {
                            let _ = w.send(snap.clone());
                        }
                        continue;
                    }
                    demanded = false;
                    let t0 = std::time::Instant::now();
                    let needs =
                        table.apply_snapshot_checked(started, &records, false, &|pid, start| {
                            procfs::alive_since(pid, start, ns_per_tick)
                        });
                    tracing::debug!(us = t0.elapsed().as_micros() as u64, "snapshot applied");
                    for rec in &procfs {
                        table.upsert_procfs(rec, started);
                    }
                    for pid in procfs_gone {
                        table.drop_procfs(pid, started);
                    }
                    if let Some(pids) = map_pids {
                        map_stats(&mut stats, &pids, &table);
                    }
                    last_refresh = started;
                    if !needs.is_empty() {
                        start_identities(&table, needs, tx.clone());
                    }
                    let snap = current(&table, &mut cached, last_refresh, &latest);
                    for (_, w) in waiters.drain(..) {
                        let _ = w.send(snap.clone());
                    }
                    if let Some(prewarm) = &prewarm
                        && last_query.elapsed() < HOT_FOR
                    {
                        let prewarm = prewarm.clone();
                        tokio::task::spawn_blocking(move || prewarm(&snap));
                    }
                }
                Msg::Identities(list) => {
                    for Identity {
                        pid,
                        start,
                        cmdline,
                        exe,
                    } in list
                    {
                        table.set_identity(pid, start, cmdline, exe);
                    }
                }
                Msg::Ahead => {
                    last_query = std::time::Instant::now();
                    demanded = true;
                    start_pass!();
                }
                Msg::Tick => {
                    let now = std::time::Instant::now();
                    // A moved loss counter means some record never reached us: reconcile now
                    // rather than at the next query.
                    let mut due = false;
                    if now.duration_since(last_loss_check) >= loss_check {
                        last_loss_check = now;
                        let losses = kernel_losses(&kernel);
                        if losses > last_losses {
                            last_losses = losses;
                            stats.rescans += 1;
                            due = true;
                        }
                    }
                    let age = Duration::from_nanos(boot_ns().saturating_sub(last_refresh));
                    // A client polling faster than the bound gets its next answer from a
                    // snapshot read ahead of the question instead of waiting for one.
                    if demanded
                        && now.duration_since(last_query) < max_age * 2
                        && age >= max_age / 2
                    {
                        due = true;
                    }
                    if due {
                        start_pass!();
                    }
                }
                Msg::Stats(reply) => {
                    let mut s = stats.clone();
                    s.table = table.counters;
                    s.live_processes = table.live().len();
                    s.fast_path_hits = latest.hits.load(std::sync::atomic::Ordering::Relaxed);
                    s.fast_path_misses = latest.misses.load(std::sync::atomic::Ordering::Relaxed);
                    s.process_reads = latest
                        .process_reads
                        .load(std::sync::atomic::Ordering::Relaxed);
                    s.exited_retained = table.exited().len();
                    if let Ok(k) = kernel.lock()
                        && let Ok(counters) = k.stats()
                    {
                        for (i, v) in counters.iter().enumerate() {
                            s.kernel.insert(stat::NAMES[i], *v);
                        }
                    }
                    let _ = reply.send(s);
                }
                Msg::Groups(reply) => {
                    let _ = reply.send(ledger.report(table.live().values()));
                }
            }
            latest
                .version
                .store(table.version(), std::sync::atomic::Ordering::Release);
        }
        tracing::debug!("process table actor stopped");
    });
    Ok((state, Queries(queries_rx)))
}

fn current(
    table: &ProcessTable,
    cached: &mut Option<Arc<Snapshot>>,
    at: u64,
    latest: &Latest,
) -> Arc<Snapshot> {
    if let Some(c) = cached
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
    *cached = Some(snap.clone());
    if let Ok(mut l) = latest.snapshot.write() {
        *l = Some(snap.clone());
    }
    snap
}

/// The process map's size and orphans, against the table as just updated.
fn map_stats(stats: &mut AgentStats, pids: &[u32], table: &ProcessTable) {
    stats.bpf_map_entries = pids.len();
    stats.bpf_map_orphans = pids
        .iter()
        .filter(|p| !table.live().contains_key(p))
        .count();
}

fn kernel_losses(kernel: &Arc<Mutex<Kernel>>) -> u64 {
    let Ok(k) = kernel.lock() else { return 0 };
    k.stats()
        .map(|s| {
            s[stat::RINGBUF_FULL as usize]
                + s[stat::MAP_FULL as usize]
                + s[stat::READ_ERROR as usize]
        })
        .unwrap_or(0)
}

fn take_gc(last: &mut std::time::Instant) -> bool {
    if last.elapsed() >= GC_EVERY {
        *last = std::time::Instant::now();
        true
    } else {
        false
    }
}

fn start_refresh(
    kernel: Arc<Mutex<Kernel>>,
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
        let started = boot_ns();
        let t0 = std::time::Instant::now();
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
            let seen: std::collections::HashSet<u32> = records.iter().map(|r| r.tgid).collect();
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
            let _ = tx.blocking_send(Msg::Refreshed {
                started: 0,
                took_us,
                records: Vec::new(),
                procfs: Vec::new(),
                procfs_gone: Vec::new(),
                gc_dropped,
                map_pids: None,
            });
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
        let _ = tx.blocking_send(Msg::Refreshed {
            started,
            took_us,
            records,
            procfs,
            procfs_gone,
            gc_dropped,
            map_pids,
        });
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
    let t0 = std::time::Instant::now();
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

fn fill_identity(table: &mut ProcessTable, pid: u32) {
    if let Some(p) = table.get(pid) {
        let start = p.start_boottime;
        let (cmdline, exe) = procfs::identity(pid);
        table.set_identity(pid, start, cmdline, exe);
    }
}

/// Processes /proc lists that the iterator did not return (seen here: pid 1 of a sandbox
/// whose init is outside our reach), read from /proc instead.
fn procfs_missing(
    records: &[bpfproc_common::TaskRecord],
    ns_per_tick: u64,
) -> (Vec<Vec<bpfproc_common::TaskRecord>>, Vec<u32>) {
    let seen: std::collections::HashSet<u32> = records.iter().map(|r| r.tgid).collect();
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

//! The actor's rules against a scripted kernel (`Fake`) and a clock the test moves by hand
//! (`FakeClock`): when a question is answered from the table and when it waits for a pass,
//! refresh-ahead, loss rescans, the map sweep, and a pass racing events.
//!
//! Passes run off the actor as in the agent (`spawn_blocking`); a test waits for a pass's
//! result on the `passes` channel before it moves the clock, so the pass's start is the time
//! the test meant.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bpfproc_common::{TaskInfo, TaskRecord, stat};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    AgentStats, Config, Latest, Msg, Snapshot,
    actor::{Actor, Clock, Counters, GC_EVERY, Ran, TaskSource, Wiring},
};
use crate::{
    groups::{GroupBy, Grouping, Ledger, Names},
    kernel::{KernelError, KernelEvent, TaskReader},
    table::ProcessTable,
};

const MS: u64 = 1_000_000;
/// The boot clock when a rig is made: its table was read then.
const BOOT: u64 = 1_000_000 * MS;
const MAX_AGE: Duration = Duration::from_millis(100);
const LOSS_CHECK: Duration = Duration::from_millis(250);
/// Above the kernel's PID_MAX_LIMIT (2^22): no process on the host has these pids, so what the
/// actor reads from /proc (is it alive, its argv) finds nothing, as for a process gone.
const A: u32 = 5_000_001;
const B: u32 = 5_000_002;
const C: u32 = 5_000_003;

/// A kernel whose passes return `records` and whose counters are `stats`.
#[derive(Default)]
struct Fake {
    records: Vec<TaskRecord>,
    stats: Arc<FakeCounters>,
    /// What a sweep of the process map returns.
    gc: (usize, Vec<u32>),
    passes: usize,
    sweeps: usize,
    /// A pass panics (a bug in reading or grouping records).
    panics: bool,
}

impl TaskSource for Fake {
    fn tasks(
        &mut self,
        _backfill: bool,
        each: &mut dyn FnMut(&TaskRecord),
    ) -> Result<usize, KernelError> {
        self.passes += 1;
        assert!(!self.panics, "a pass panicked");
        self.records.iter().for_each(each);
        Ok(self.records.len())
    }

    fn gc(&mut self, seen: &HashSet<u32>, _started: u64) -> Result<(usize, Vec<u32>), KernelError> {
        assert!(!seen.is_empty(), "a sweep follows a pass that saw tasks");
        self.sweeps += 1;
        Ok(self.gc.clone())
    }

    fn counters(&self) -> Result<Arc<dyn Counters>, KernelError> {
        Ok(self.stats.clone())
    }

    fn map_pids(&self) -> Result<Vec<u32>, KernelError> {
        Ok(Vec::new())
    }

    fn task_reader(&self) -> Result<TaskReader, KernelError> {
        Err(KernelError::Iter("no one-process reads here".into()))
    }

    fn ran(&mut self) -> Option<Arc<dyn Ran>> {
        None
    }
}

/// Counters a test sets.
#[derive(Default)]
struct FakeCounters(Mutex<[u64; stat::COUNT as usize]>);

impl FakeCounters {
    fn set(&self, counter: u32, value: u64) {
        self.0.lock().unwrap()[counter as usize] = value;
    }
}

impl Counters for FakeCounters {
    fn read(&self) -> Result<[u64; stat::COUNT as usize], KernelError> {
        Ok(*self.0.lock().unwrap())
    }
}

/// Both clocks, moved only by `advance`.
struct FakeClock {
    base: Instant,
    elapsed_ns: AtomicU64,
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }

    fn boot_ns(&self) -> u64 {
        BOOT + self.elapsed_ns.load(Ordering::SeqCst)
    }
}

fn record(pid: u32, start: u64, utime: u64) -> TaskRecord {
    // SAFETY: plain integers and arrays.
    let mut r: TaskRecord = unsafe { std::mem::zeroed() };
    r.tid = pid;
    r.tgid = pid;
    r.ppid = 1;
    r.start_boottime = start;
    r.nr_threads = 1;
    r.has_mm = 1;
    r.utime = utime;
    r.comm[..4].copy_from_slice(b"init");
    r
}

fn info(pid: u32, ppid: u32, start: u64) -> TaskInfo {
    // SAFETY: plain integers and arrays.
    let mut t: TaskInfo = unsafe { std::mem::zeroed() };
    t.tgid = pid;
    t.tid = pid;
    t.ppid = ppid;
    t.start_boottime = start;
    t.nr_threads = 1;
    t.comm[..2].copy_from_slice(b"sh");
    t
}

struct Rig {
    actor: Actor<Fake>,
    kernel: Arc<Mutex<Fake>>,
    clock: Arc<FakeClock>,
    latest: Arc<Latest>,
    /// Finished passes, as the ring reader would pass them on.
    passes: mpsc::Receiver<Msg>,
    /// Results of other work off the actor (identities), left unread.
    _others: mpsc::Receiver<Msg>,
}

/// A kernel that marks which processes ran: `take` returns what `ran` holds (and empties it),
/// `process` what `now` holds for the pid.
#[derive(Default)]
struct FakeRan {
    ran: Mutex<Option<Vec<u32>>>,
    now: Mutex<std::collections::HashMap<u32, Vec<TaskRecord>>>,
    reads: AtomicU64,
    clears: AtomicU64,
}

impl FakeRan {
    /// `pids` ran (`None`: a mark was lost).
    fn ran(&self, pids: Option<&[u32]>) {
        *self.ran.lock().unwrap() = pids.map(<[u32]>::to_vec);
    }

    /// What a read of `pid` returns from now on.
    fn set(&self, pid: u32, tasks: Vec<TaskRecord>) {
        self.now.lock().unwrap().insert(pid, tasks);
    }
}

impl Ran for FakeRan {
    fn take(&self) -> Result<Option<Vec<u32>>, KernelError> {
        Ok(self.ran.lock().unwrap().replace(Vec::new()))
    }

    fn clear(&self) {
        self.clears.fetch_add(1, Ordering::SeqCst);
        *self.ran.lock().unwrap() = Some(Vec::new());
    }

    fn process(&self, pid: u32) -> Result<Vec<TaskRecord>, KernelError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .now
            .lock()
            .unwrap()
            .get(&pid)
            .cloned()
            .unwrap_or_default())
    }
}

impl Rig {
    /// An actor whose table holds `backfill`, read at `BOOT`, as `spawn` leaves it.
    fn new(backfill: &[TaskRecord]) -> Self {
        Self::with_ran(backfill, None)
    }

    /// As `new`, with a kernel that marks which processes ran.
    fn with_ran(backfill: &[TaskRecord], ran: Option<Arc<FakeRan>>) -> Self {
        let clock = Arc::new(FakeClock {
            base: Instant::now(),
            elapsed_ns: AtomicU64::new(0),
        });
        let kernel = Arc::new(Mutex::new(Fake {
            records: backfill.to_vec(),
            ..Fake::default()
        }));
        let mut table = ProcessTable::new(64);
        table.apply_snapshot(BOOT, backfill, true);
        let (tx, others) = mpsc::channel(1024);
        let (passes_tx, passes) = mpsc::channel(1024);
        let latest = Arc::new(Latest::default());
        let wiring = Wiring {
            latest: latest.clone(),
            tx,
            passes: passes_tx,
            events: broadcast::channel(64).0,
            ran: ran.map(|r| r as Arc<dyn Ran>),
        };
        let cfg = Config {
            exited_cap: 64,
            max_age: MAX_AGE,
            loss_check: LOSS_CHECK,
            prewarm: None,
            groups: Ledger::new(Grouping::By(GroupBy::Comm), Names::detect(), 100, 4096),
        };
        let actor = Actor::new(
            kernel.clone(),
            clock.clone(),
            wiring,
            cfg,
            table,
            AgentStats::default(),
            BOOT,
        );
        Self {
            actor,
            kernel,
            clock,
            latest,
            passes,
            _others: others,
        }
    }

    fn advance(&self, d: Duration) {
        self.clock
            .elapsed_ns
            .fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.kernel.lock().unwrap()
    }

    /// A question for numbers at most `max_age` old; its answer, if any, is in the receiver.
    fn ask(&mut self, max_age: Duration) -> oneshot::Receiver<Arc<Snapshot>> {
        let (reply, rx) = oneshot::channel();
        self.actor.handle(Msg::Snapshot { max_age, reply });
        rx
    }

    /// Asks, and expects the answer at once.
    fn ask_now(&mut self, max_age: Duration) -> Arc<Snapshot> {
        self.ask(max_age)
            .try_recv()
            .expect("answered without waiting for a pass")
    }

    /// Records from the ring, as `State::push_events` hands them over.
    fn events(&mut self, batch: Vec<KernelEvent>) {
        self.latest
            .in_flight
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        self.actor.handle(Msg::Events(batch));
    }

    fn tick(&mut self) {
        self.actor.handle(Msg::Tick);
    }

    fn stats(&mut self) -> AgentStats {
        let (reply, mut rx) = oneshot::channel();
        self.actor.handle(Msg::Stats(reply));
        rx.try_recv().expect("stats are answered at once")
    }

    /// Waits for the running refresh of what ran, and applies its result.
    async fn finish_ran(&mut self) {
        let msg = self.ran_result().await;
        self.actor.handle(msg);
    }

    /// Waits for the running refresh of what ran, without applying its result.
    async fn ran_result(&mut self) -> Msg {
        assert!(
            self.actor.ran_running(),
            "no refresh of what ran was started"
        );
        let msg = tokio::time::timeout(Duration::from_secs(10), self.passes.recv())
            .await
            .expect("the refresh finishes")
            .expect("the passes channel is open");
        assert!(matches!(msg, Msg::Refreshed(_)));
        msg
    }

    /// Waits for the running pass's result, without applying it.
    async fn pass_result(&mut self) -> Msg {
        assert!(self.actor.pass_running(), "no pass was started");
        let msg = tokio::time::timeout(Duration::from_secs(10), self.passes.recv())
            .await
            .expect("the pass finishes")
            .expect("the passes channel is open");
        assert!(matches!(msg, Msg::Refreshed(_)));
        msg
    }

    /// Waits for the running pass and applies its result.
    async fn finish_pass(&mut self) {
        let msg = self.pass_result().await;
        self.actor.handle(msg);
        assert!(!self.actor.pass_running());
    }

    fn no_pass(&mut self) {
        assert!(!self.actor.pass_running(), "a pass was started");
        assert!(self.passes.try_recv().is_err(), "a pass result is waiting");
    }
}

fn answered(rx: &mut oneshot::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    rx.try_recv().expect("answered")
}

fn waiting(rx: &mut oneshot::Receiver<Arc<Snapshot>>) -> bool {
    matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

#[tokio::test]
async fn a_question_within_the_bound_is_answered_from_the_table() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    rig.advance(Duration::from_millis(60));
    let snap = rig.ask_now(MAX_AGE);
    assert_eq!(snap.refreshed_at, BOOT);
    assert_eq!(snap.get(A).unwrap().tasks.to_vec()[0].utime, 5);
    // Exactly at the bound is still within it; a question that takes numbers of any age is
    // answered however old they are.
    rig.advance(Duration::from_millis(40));
    let again = rig.ask_now(MAX_AGE);
    assert!(
        Arc::ptr_eq(&snap, &again),
        "an unchanged table is not copied"
    );
    rig.advance(Duration::from_secs(60));
    rig.ask_now(Duration::MAX);
    rig.no_pass();
    assert_eq!(rig.fake().passes, 0);
}

#[tokio::test]
async fn an_older_question_waits_for_one_pass_that_every_waiter_shares() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    rig.advance(Duration::from_millis(150));
    rig.fake().records = vec![record(A, 10, 7)];
    let mut first = rig.ask(MAX_AGE);
    assert!(waiting(&mut first));
    assert!(rig.actor.pass_running());
    // Questions while the pass runs wait for it rather than start their own.
    let mut second = rig.ask(MAX_AGE);
    let mut third = rig.ask(Duration::ZERO);
    assert!(waiting(&mut second) && waiting(&mut third));
    rig.finish_pass().await;
    let (a, b, c) = (
        answered(&mut first),
        answered(&mut second),
        answered(&mut third),
    );
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c));
    assert_eq!(a.refreshed_at, BOOT + 150 * MS);
    assert_eq!(a.get(A).unwrap().tasks.to_vec()[0].utime, 7);
    assert_eq!(rig.fake().passes, 1);
    rig.no_pass();
    // The pass's numbers now answer the next question at once.
    assert!(Arc::ptr_eq(&rig.ask_now(MAX_AGE), &a));
    // And the fast path may serve that snapshot: its version is published.
    assert_eq!(rig.latest.version.load(Ordering::Acquire), a.version);
    let stats = rig.stats();
    assert_eq!(stats.last_iterator_tasks, 1);
    assert_eq!(stats.table.snapshots, 2, "the backfill and the one pass");
}

#[tokio::test]
async fn a_failed_pass_answers_with_the_table_as_it_is() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    rig.advance(Duration::from_millis(150));
    // An empty pass is a failed one: never applied, or it would declare every process gone.
    rig.fake().records.clear();
    let mut q = rig.ask(MAX_AGE);
    rig.finish_pass().await;
    let snap = answered(&mut q);
    assert_eq!(snap.refreshed_at, BOOT);
    assert!(snap.get(A).is_some());
    // The next question tries again.
    rig.fake().records = vec![record(A, 10, 6)];
    let mut q = rig.ask(MAX_AGE);
    assert!(waiting(&mut q));
    rig.finish_pass().await;
    assert_eq!(answered(&mut q).refreshed_at, BOOT + 150 * MS);
    assert_eq!(rig.fake().passes, 2);
}

#[tokio::test]
async fn refresh_ahead_keeps_a_polling_client_from_waiting() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    rig.advance(Duration::from_millis(10));
    rig.ask_now(MAX_AGE);
    // Numbers younger than half the bound are not read again yet.
    rig.advance(Duration::from_millis(30));
    rig.tick();
    rig.no_pass();
    // At half the bound, with a client asking within twice the bound, a pass starts ahead.
    rig.advance(Duration::from_millis(10));
    rig.tick();
    assert!(rig.actor.pass_running());
    rig.finish_pass().await;
    // The client's next question, past the bound of the first numbers, does not wait.
    rig.advance(Duration::from_millis(70));
    let snap = rig.ask_now(MAX_AGE);
    assert_eq!(snap.refreshed_at, BOOT + 50 * MS);
    // It keeps asking, so the next pass is read ahead too.
    rig.tick();
    assert!(rig.actor.pass_running());
    rig.finish_pass().await;
    assert_eq!(rig.fake().passes, 2);
    // Nobody asked for the new numbers: no more passes, however long the agent idles.
    for _ in 0..20 {
        rig.advance(Duration::from_millis(60));
        rig.tick();
        rig.no_pass();
    }
    assert_eq!(rig.fake().passes, 2);
}

#[tokio::test]
async fn no_refresh_ahead_without_a_client_asking_for_fresh_numbers() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    rig.advance(Duration::from_millis(60));
    rig.tick();
    rig.no_pass();
    // A client that asked once and went quiet: past twice the bound, nothing is read ahead.
    rig.ask_now(MAX_AGE);
    rig.advance(Duration::from_millis(200));
    rig.tick();
    rig.no_pass();
    // A listing (numbers of any age) and a `cache=` mount (older numbers than the agent's
    // bound) are answered as they are and do not count as demand.
    rig.ask_now(Duration::MAX);
    rig.ask_now(Duration::from_secs(1));
    rig.advance(Duration::from_millis(10));
    rig.tick();
    rig.no_pass();
    assert_eq!(rig.fake().passes, 0);
    // Reads of single processes that have cost a pass start one; its numbers, asked for by
    // nobody since, bring no pass ahead.
    rig.actor.handle(Msg::Ahead);
    rig.finish_pass().await;
    rig.advance(Duration::from_millis(60));
    rig.tick();
    rig.no_pass();
    assert_eq!(rig.fake().passes, 1);
}

#[tokio::test]
async fn a_moved_loss_counter_rescans_at_the_next_check() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    // A fork record was lost: the kernel counted it, and the next pass finds the process.
    {
        let mut k = rig.fake();
        k.stats.set(stat::RINGBUF_FULL, 1);
        k.records.push(record(B, 20, 1));
    }
    // The counters are read once per loss-check period.
    rig.advance(Duration::from_millis(100));
    rig.tick();
    rig.no_pass();
    assert_eq!(rig.stats().rescans, 0);
    rig.advance(Duration::from_millis(150));
    rig.tick();
    assert_eq!(rig.stats().rescans, 1);
    rig.finish_pass().await;
    let stats = rig.stats();
    assert_eq!(stats.table.found_by_rescan, 1);
    assert_eq!(stats.kernel["ringbuf_full"], 1);
    assert!(rig.ask_now(MAX_AGE).get(B).is_some());
    // The same count again is no new loss.
    rig.advance(LOSS_CHECK);
    rig.tick();
    rig.no_pass();
    assert_eq!(rig.stats().rescans, 1);
    // Any of the loss counters moving is.
    rig.fake().stats.set(stat::MAP_FULL, 2);
    rig.advance(LOSS_CHECK);
    rig.tick();
    assert_eq!(rig.stats().rescans, 2);
    rig.finish_pass().await;
    rig.fake().stats.set(stat::READ_ERROR, 1);
    rig.advance(LOSS_CHECK);
    rig.tick();
    assert_eq!(rig.stats().rescans, 3);
    rig.finish_pass().await;
    // Counters that are not losses do not rescan.
    rig.fake().stats.set(stat::FORK_SEEN, 1000);
    rig.advance(LOSS_CHECK);
    rig.tick();
    rig.no_pass();
    assert_eq!(rig.stats().rescans, 3);
    assert_eq!(rig.fake().passes, 3);
}

#[tokio::test]
async fn events_between_a_pass_and_its_result_are_kept() {
    let mut rig = Rig::new(&[record(A, 10, 5), record(B, 20, 5)]);
    rig.advance(Duration::from_millis(150));
    // The pass sees A and B as they were when it began, and not C.
    rig.fake().records = vec![record(A, 10, 9), record(B, 20, 9)];
    let mut q = rig.ask(MAX_AGE);
    let pass = rig.pass_result().await;
    // Meanwhile: C is forked, B exits with status 3 and is reaped, A renames itself.
    let c_start = BOOT + 155 * MS;
    let mut exit = info(B, 1, 20);
    exit.exit_code = 3 << 8;
    let mut comm = [0u8; 16];
    comm[..7].copy_from_slice(b"renamed");
    rig.advance(Duration::from_millis(10));
    rig.events(vec![
        KernelEvent::Fork {
            ts: c_start,
            forker: A,
            task: info(C, A, c_start),
            cgroup_id: 0,
        },
        KernelEvent::Exit {
            ts: BOOT + 157 * MS,
            task: exit,
            cgroup_id: 0,
        },
        KernelEvent::Free {
            ts: BOOT + 158 * MS,
            pid: B,
            start_boottime: 20,
        },
        KernelEvent::Rename {
            ts: BOOT + 159 * MS,
            pid: A,
            start_boottime: 10,
            comm,
        },
    ]);
    assert!(waiting(&mut q), "the question waits for the pass");
    assert_eq!(rig.latest.in_flight.load(Ordering::Acquire), 0);
    rig.actor.handle(pass);
    let snap = answered(&mut q);
    assert_eq!(snap.refreshed_at, BOOT + 150 * MS);
    // C is newer than the pass, which could not have seen it: it stays.
    assert!(snap.get(C).is_some());
    // B's exit record is newer than the pass that still saw it: B stays gone, with its status.
    assert!(snap.get(B).is_none());
    let b = snap.exited.iter().find(|p| p.pid == B).unwrap();
    assert_eq!(b.exit.unwrap().exit_code(), Some(3));
    // A takes the pass's numbers but keeps the name its newer rename gave it.
    let a = snap.get(A).unwrap();
    assert_eq!(a.comm, b"renamed");
    assert_eq!(a.tasks.to_vec()[0].utime, 9);
    let t = rig.stats().table;
    assert_eq!(
        (t.lost_exits, t.found_by_rescan, t.identity_repairs),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn the_process_map_is_swept_with_a_pass_every_gc_period() {
    let mut rig = Rig::new(&[record(A, 10, 5)]);
    // One entry dropped; of the two kept, B has no live process: an orphan.
    rig.fake().gc = (1, vec![A, B]);
    rig.advance(Duration::from_millis(150));
    rig.ask(MAX_AGE);
    rig.finish_pass().await;
    assert_eq!(rig.fake().sweeps, 0, "not due yet");
    rig.advance(GC_EVERY);
    rig.ask(MAX_AGE);
    rig.finish_pass().await;
    assert_eq!(rig.fake().sweeps, 1);
    let stats = rig.stats();
    assert_eq!(
        (
            stats.map_gc_dropped,
            stats.bpf_map_entries,
            stats.bpf_map_orphans
        ),
        (1, 2, 1)
    );
    // The next pass within the period does not sweep.
    rig.advance(Duration::from_millis(150));
    rig.ask(MAX_AGE);
    rig.finish_pass().await;
    assert_eq!(rig.fake().sweeps, 1);
    assert_eq!(rig.fake().passes, 3);
}

#[tokio::test]
async fn a_stale_question_reads_only_the_processes_that_ran_never_a_pass() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5), record(B, 20, 5)], Some(ran.clone()));
    rig.advance(Duration::from_millis(150));
    // A ran (its CPU time moved); B slept, and what a pass would read of it is the same.
    ran.ran(Some(&[A]));
    ran.set(A, vec![record(A, 10, 9)]);
    rig.fake().records = vec![record(A, 10, 9), record(B, 20, 5)];
    let mut q = rig.ask(MAX_AGE);
    assert!(waiting(&mut q));
    assert!(!rig.actor.pass_running(), "no pass over every task");
    rig.finish_ran().await;
    let snap = answered(&mut q);
    assert_eq!(snap.refreshed_at, BOOT + 150 * MS);
    assert_eq!(snap.get(A).unwrap().tasks.to_vec()[0].utime, 9);
    assert_eq!(snap.get(B).unwrap().tasks.to_vec()[0].utime, 5);
    assert_eq!(ran.reads.load(Ordering::SeqCst), 1, "B was not read");
    // One process's numbers are still as of the last pass over every task.
    assert_eq!(snap.full_at, BOOT);
    assert_eq!(rig.fake().passes, 0);
    let stats = rig.stats();
    assert_eq!((stats.partial_refreshes, stats.partial_reads), (1, 1));
    // Within the bound, the next question is answered at once.
    rig.advance(Duration::from_millis(50));
    rig.ask_now(MAX_AGE);
}

#[tokio::test]
async fn an_unchanged_refresh_shares_the_processes_of_the_last_snapshot() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5)], Some(ran.clone()));
    let before = rig.ask_now(MAX_AGE);
    rig.advance(Duration::from_millis(150));
    // Something ran, and read the same as before: the table did not change.
    ran.ran(Some(&[A]));
    ran.set(A, vec![record(A, 10, 5)]);
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    let after = answered(&mut q);
    assert_eq!(after.refreshed_at, BOOT + 150 * MS);
    assert_eq!(after.version, before.version);
    assert!(Arc::ptr_eq(&after.listing_json, &before.listing_json));
    assert!(Arc::ptr_eq(after.get(A).unwrap(), before.get(A).unwrap()));
}

#[tokio::test]
async fn children_of_a_process_that_ended_are_read_again_for_their_new_parent() {
    let ran = Arc::new(FakeRan::default());
    let mut child = record(C, 30, 1);
    child.ppid = B;
    let mut rig = Rig::with_ran(
        &[record(A, 10, 5), record(B, 20, 5), child],
        Some(ran.clone()),
    );
    let snap = rig.ask_now(MAX_AGE);
    assert_eq!(snap.get(C).unwrap().ppid, B);
    rig.advance(Duration::from_millis(150));
    // B exited (its last switch marked it); its sleeping child was handed to A meanwhile,
    // which no event says and the child's own marks would not (it did not run).
    ran.ran(Some(&[B]));
    let mut moved = child;
    moved.ppid = A;
    ran.set(C, vec![moved]);
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    let snap = answered(&mut q);
    assert_eq!(snap.get(C).unwrap().ppid, A);
    // B's own end is the events' to tell: read empty, it stays until they do.
    assert!(snap.get(B).is_some());
}

/// The periodic pass and a refresh of what ran that fell back to a pass can run at once, and
/// the later one's result can come first: the older pass, which saw a process alive before it
/// was reaped, must not bring it back. (It did: the first result applied forgot the reaped
/// process's tombstone, and the tree of a test's shell listed its reaped child for 10 s.)
#[tokio::test]
async fn a_reaped_process_stays_gone_when_two_passes_finish_out_of_order() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5), record(B, 20, 5)], Some(ran.clone()));
    rig.advance(Duration::from_millis(150));
    // The periodic pass sees B alive, and busy (a pass passes on only what changed).
    rig.fake().records = vec![record(A, 10, 5), record(B, 20, 9)];
    rig.actor.start_pass();
    let older = rig.pass_result().await;
    // B exits and is reaped.
    let mut exit = info(B, 1, 20);
    exit.exit_code = 0;
    rig.events(vec![
        KernelEvent::Exit {
            ts: BOOT + 155 * MS,
            task: exit,
            cgroup_id: 0,
        },
        KernelEvent::Free {
            ts: BOOT + 156 * MS,
            pid: B,
            start_boottime: 20,
        },
    ]);
    // A refresh of what ran falls back to a pass (a mark was lost), which no longer sees B,
    // and its result is applied first.
    rig.advance(Duration::from_millis(20));
    rig.fake().records = vec![record(A, 10, 7)];
    ran.ran(None);
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    assert!(answered(&mut q).get(B).is_none());
    rig.actor.handle(older);
    assert!(!rig.actor.pass_running());
    let snap = rig.ask_now(Duration::MAX);
    assert!(snap.get(B).is_none(), "the reaped process came back");
    assert_eq!(snap.exited.iter().filter(|p| p.pid == B).count(), 1);
    assert_eq!(rig.stats().table.found_by_rescan, 0);
}

/// A refresh that panics answers its waiters with the table as it is, and the next question
/// starts another: its flag does not stay set for ever with every question waiting on it.
#[tokio::test]
async fn a_refresh_that_panics_still_answers_and_the_next_one_runs() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5)], Some(ran.clone()));
    rig.advance(Duration::from_millis(150));
    ran.ran(None);
    rig.fake().panics = true;
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    assert!(answered(&mut q).get(A).is_some());
    assert!(!rig.actor.ran_running());
    // The kernel's lock is poisoned now, as a panic in the real pass would leave it; the
    // next refreshes still run and answer: one of what ran, and a pass over every task.
    rig.advance(Duration::from_millis(150));
    ran.ran(Some(&[A]));
    ran.set(A, vec![record(A, 10, 8)]);
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    assert_eq!(answered(&mut q).get(A).unwrap().tasks.to_vec()[0].utime, 8);
    {
        let mut k = rig
            .kernel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        k.panics = false;
        k.records = vec![record(A, 10, 9)];
    }
    rig.advance(Duration::from_millis(150));
    ran.ran(None);
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    assert_eq!(answered(&mut q).get(A).unwrap().tasks.to_vec()[0].utime, 9);
}

#[tokio::test]
async fn lost_marks_or_too_many_processes_that_ran_make_a_pass() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5), record(B, 20, 5)], Some(ran.clone()));
    rig.advance(Duration::from_millis(150));
    // A process beyond the marks' map ran: only a pass can say which.
    ran.ran(None);
    rig.fake().records = vec![record(A, 10, 7), record(B, 20, 7)];
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    let snap = answered(&mut q);
    assert_eq!(rig.fake().passes, 1);
    assert_eq!(snap.get(B).unwrap().tasks.to_vec()[0].utime, 7);
    assert_eq!(snap.full_at, BOOT + 150 * MS);
    assert_eq!(
        ran.clears.load(Ordering::SeqCst),
        1,
        "the pass clears the marks first"
    );
    assert_eq!(ran.reads.load(Ordering::SeqCst), 0);
    assert!(!rig.actor.ran_running() && !rig.actor.pass_running());
    // Past a third of the table read one by one, a pass is cheaper: one is made instead
    // (the table here is small, so it takes more than 16).
    let many: Vec<u32> = (1..=17).map(|i| A + 100 + i).collect();
    rig.advance(Duration::from_millis(150));
    ran.ran(Some(&many));
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    answered(&mut q);
    assert_eq!(rig.fake().passes, 2);
    assert_eq!(ran.reads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_pass_runs_in_the_background_every_gc_period_and_no_question_waits_for_it() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5)], Some(ran.clone()));
    rig.ask_now(MAX_AGE);
    rig.advance(GC_EVERY);
    // Someone asked within the period: a pass brings up to date what no mark tells of.
    rig.ask(Duration::from_secs(60));
    rig.tick();
    assert!(rig.actor.pass_running());
    let pass = rig.pass_result().await;
    // A question meanwhile reads what ran; it does not wait for the pass.
    rig.advance(Duration::from_millis(150));
    ran.ran(Some(&[A]));
    ran.set(A, vec![record(A, 10, 8)]);
    let mut q = rig.ask(MAX_AGE);
    rig.finish_ran().await;
    let snap = answered(&mut q);
    assert_eq!(snap.get(A).unwrap().tasks.to_vec()[0].utime, 8);
    // The pass, begun before that read, lands with older numbers: they do not undo it.
    rig.actor.handle(pass);
    let snap = rig.ask_now(MAX_AGE);
    assert_eq!(snap.get(A).unwrap().tasks.to_vec()[0].utime, 8);
    assert_eq!(
        snap.refreshed_at,
        BOOT + GC_EVERY.as_nanos() as u64 + 150 * MS
    );
    assert_eq!(snap.full_at, BOOT + GC_EVERY.as_nanos() as u64);
    assert_eq!(rig.fake().sweeps, 1, "the map's sweep rides along");
    // Nobody asks any more: no more passes, however long the agent idles.
    for _ in 0..3 {
        rig.advance(GC_EVERY);
        rig.tick();
        rig.no_pass();
    }
}

#[tokio::test]
async fn a_question_asked_while_a_refresh_runs_waits_for_the_next_one() {
    let ran = Arc::new(FakeRan::default());
    let mut rig = Rig::with_ran(&[record(A, 10, 5)], Some(ran.clone()));
    rig.advance(Duration::from_millis(150));
    ran.ran(Some(&[A]));
    ran.set(A, vec![record(A, 10, 6)]);
    let mut first = rig.ask(MAX_AGE);
    let result = rig.ran_result().await;
    // A ran again after the refresh read it; a question now must see that.
    rig.advance(Duration::from_millis(10));
    let mut second = rig.ask(MAX_AGE);
    ran.ran(Some(&[A]));
    ran.set(A, vec![record(A, 10, 7)]);
    rig.actor.handle(result);
    assert_eq!(
        answered(&mut first).get(A).unwrap().tasks.to_vec()[0].utime,
        6
    );
    assert!(
        waiting(&mut second),
        "the refresh began before the question"
    );
    rig.finish_ran().await;
    assert_eq!(
        answered(&mut second).get(A).unwrap().tasks.to_vec()[0].utime,
        7
    );
}

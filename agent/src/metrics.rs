//! `GET /metrics`: the Prometheus exposition of the mirrored table. Owns the `Metrics` registry;
//! every value comes from a `Snapshot`, the agent's stats and the group ledger (`groups.rs`),
//! never from walking /proc (the agent's own `bpfproc_process_*` metrics read /proc/self only).
//!
//! Each scrape resets and refills the families from the actor's absolute numbers, so series of
//! processes and states that are gone disappear, and counters are exactly the table's counters
//! (monotonic because the table's and the ledger's are).

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus::{
    CounterVec, Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    groups::GroupReport,
    kernel::{LOSS_CAUSES, RingFill},
    state::{AgentStats, Snapshot, State},
    table::Chunk,
    view::{self, Host},
};

/// Builds one metric from its name, HELP and label names.
trait Make: Sized {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self>;
}

macro_rules! make_scalar {
    ($($t:ty),*) => {$(
        impl Make for $t {
            fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
                <$t>::with_opts(Opts::new(name, help))
            }
        }
    )*};
}
make_scalar!(IntGauge, IntCounter);

macro_rules! make_vec {
    ($($t:ty),*) => {$(
        impl Make for $t {
            fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
                <$t>::new(Opts::new(name, help), labels)
            }
        }
    )*};
}
make_vec!(IntGaugeVec, IntCounterVec, CounterVec);

impl Make for Histogram {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]))
    }
}

/// Declares a struct of metrics whose doc comments are their HELP text, and its constructor,
/// which registers each one.
macro_rules! families {
    ($(#[$sm:meta])* struct $name:ident {
        $( $(#[doc = $doc:literal])+ $field:ident : $ty:ty = $metric:literal $([$($label:literal),*])?, )*
    }) => {
        $(#[$sm])*
        struct $name { $( $(#[doc = $doc])+ $field: $ty, )* }

        impl $name {
            fn register(reg: &Registry) -> prometheus::Result<Self> {
                $(
                    let help = concat!($($doc),+).trim();
                    let $field = <$ty>::make($metric, help, &[$($($label),*)?])?;
                    reg.register(Box::new($field.clone()))?;
                )*
                Ok(Self { $($field,)* })
            }
        }
    };
}

families! {
    /// Host-level, agent-health and per-group families.
    struct Families {
        /// Live processes (thread groups, kernel threads included) by state letter, as ps shows it.
        processes: IntGaugeVec = "bpfproc_processes" ["state"],
        /// Live threads by state letter.
        threads: IntGaugeVec = "bpfproc_threads" ["state"],
        /// Processes forked since the agent started (fork records; threads are not counted).
        forks: IntCounter = "bpfproc_forks_total",
        /// Successful execs since the agent started.
        execs: IntCounter = "bpfproc_execs_total",
        /// Processes that exited since the agent started, from exit records.
        exits: IntCounter = "bpfproc_exits_total",
        /// Processes that exited with a non-zero exit code.
        exits_nonzero: IntCounter = "bpfproc_exits_nonzero_total",
        /// Processes killed by a signal, by signal name.
        exits_signaled: IntCounterVec = "bpfproc_exits_signaled_total" ["signal"],
        /// Processes whose death by signal dumped core.
        exits_core_dumped: IntCounter = "bpfproc_exits_core_dumped_total",
        /// Processes that exited less than one second after they started: the ones an exporter
        /// polling /proc never sees.
        short_lived: IntCounter = "bpfproc_short_lived_exits_total",
        /// Processes that vanished without an exit record (found gone by a rescan); their exit
        /// status is unknown.
        lost_exits: IntCounter = "bpfproc_lost_exits_total",
        /// Ring-buffer records the agent received.
        events_received: IntCounter = "bpfproc_events_received_total",
        /// Times each BPF hook ran, counted in the kernel.
        kernel_hook_runs: IntCounterVec = "bpfproc_kernel_hook_runs_total" ["hook"],
        /// Records or reads the kernel side could not deliver, by cause; any increase triggers a
        /// rescan.
        events_lost: IntCounterVec = "bpfproc_events_lost_total" ["cause"],
        /// Rescans triggered by a loss counter moving.
        rescans: IntCounter = "bpfproc_rescans_total",
        /// FUSE requests answered by the agent's proc views, by operation.
        fuse_requests: IntCounterVec = "bpfproc_fuse_requests_total" ["op"],
        /// Processes found by the start-up backfill (or read from /proc because the task
        /// iterator cannot see them).
        backfilled: IntCounter = "bpfproc_backfilled_processes_total",
        /// Processes a later iterator pass found that no event had announced (a lost fork record).
        found_by_rescan: IntCounter = "bpfproc_rescan_found_processes_total",
        /// Live entries replaced because their pid had been reused by a newer process.
        pid_reuse: IntCounter = "bpfproc_pid_reuse_total",
        /// Task-iterator passes applied to the table.
        iterator_passes: IntCounter = "bpfproc_iterator_passes_total",
        /// Reads of one process's threads that stood in for a pass (a view's file or
        /// `/v1/processes/PID` asked about a process whose numbers were stale).
        process_reads: IntCounter = "bpfproc_process_reads_total",
        /// Refreshes of the numbers that read only the processes that ran (or were woken, or
        /// changed cgroup) since the last one, instead of a pass over every task.
        partial_refreshes: IntCounter = "bpfproc_partial_refreshes_total",
        /// Processes those refreshes read, each on its own.
        partial_reads: IntCounter = "bpfproc_partial_refresh_reads_total",
        /// Times the ring reader stopped polling an empty ring (it polls every --drain-ms
        /// while records come, and is woken by the next record after 10 empty polls).
        reader_parks: IntCounter = "bpfproc_ring_reader_parks_total",
        /// Drains of the ring the kernel woke the reader for: the first record after it
        /// parked, or a backlog of a quarter of the ring.
        reader_woken: IntCounter = "bpfproc_ring_reader_wakeups_total",
        /// Size of the kernel ring buffer.
        ringbuf_size: IntGauge = "bpfproc_ringbuf_size_bytes",
        /// Bytes written to the ring buffer and not yet consumed by the agent.
        ringbuf_used: IntGauge = "bpfproc_ringbuf_used_bytes",
        /// Entries in the in-kernel process map, as of the last sweep (every 10 s while the
        /// agent is asked for numbers).
        map_entries: IntGauge = "bpfproc_process_map_entries",
        /// Capacity of the in-kernel process map (--max-processes).
        map_capacity: IntGauge = "bpfproc_process_map_capacity",
        /// Live processes in the agent's table.
        table_live: IntGauge = "bpfproc_table_processes",
        /// Exited processes retained for /v1/exited.
        table_exited: IntGauge = "bpfproc_table_exited_processes",
        /// Time the agent spent answering /metrics scrapes (this one excluded).
        scrape_duration: Histogram = "bpfproc_scrape_duration_seconds",
        /// Exit and exec log records the OTLP export delivered (0 while it is off).
        otlp_exported: IntCounter = "bpfproc_otlp_log_records_exported_total",
        /// Exit and exec log records the OTLP export dropped, by cause: `queue_full` (the
        /// collector is slower than the events), `lagged` (the exporter fell behind the table's
        /// event stream), `export_failed` (the collector refused them or was unreachable).
        otlp_dropped: IntCounterVec = "bpfproc_otlp_log_records_dropped_total" ["cause"],
        /// Version of the agent; always 1.
        build_info: IntGaugeVec = "bpfproc_build_info" ["version"],
        /// Live processes in each group (zombies excluded).
        group_processes: IntGaugeVec = "bpfproc_group_processes" ["group"],
        /// Threads of the live processes in each group.
        group_threads: IntGaugeVec = "bpfproc_group_threads" ["group"],
        /// CPU time of each group's processes, including processes that exited (from their exit
        /// records), by mode.
        group_cpu: CounterVec = "bpfproc_group_cpu_seconds_total" ["group", "mode"],
        /// Resident memory of each group's live processes.
        group_resident: IntGaugeVec = "bpfproc_group_resident_memory_bytes" ["group"],
        /// Virtual memory of each group's live processes.
        group_virtual: IntGaugeVec = "bpfproc_group_virtual_memory_bytes" ["group"],
        /// File-descriptor table slots (FDSize) of each group's live processes: an upper bound on
        /// their open files, read without walking /proc/PID/fd.
        group_fd_slots: IntGaugeVec = "bpfproc_group_fd_slots" ["group"],
        /// Processes that joined each group by fork or exec.
        group_starts: IntCounterVec = "bpfproc_group_starts_total" ["group"],
        /// Processes of each group that exited.
        group_exits: IntCounterVec = "bpfproc_group_exits_total" ["group"],
    }
}

families! {
    /// Per-process families, registered only with --metrics-per-pid.
    struct PerPid {
        /// CPU time of one process (the heaviest --metrics-per-pid-max by CPU), by mode.
        cpu: CounterVec = "bpfproc_pid_cpu_seconds_total" ["pid", "comm", "mode"],
        /// Resident memory of one process.
        resident: IntGaugeVec = "bpfproc_pid_resident_memory_bytes" ["pid", "comm"],
        /// Threads of one process.
        threads: IntGaugeVec = "bpfproc_pid_threads" ["pid", "comm"],
        /// Per-process series left out because of the --metrics-per-pid-max cap, summed over
        /// scrapes.
        dropped: IntCounter = "bpfproc_pid_series_dropped_total",
    }
}

pub struct Config {
    /// `Some(cap)`: export per-process series for at most `cap` processes.
    pub per_pid: Option<usize>,
    pub ringbuf_bytes: u32,
    pub map_capacity: u32,
    /// The ring buffer's fd, to read its fill level.
    pub ring: Option<Arc<RingFill>>,
}

pub struct Metrics {
    registry: Registry,
    families: Families,
    per_pid: Option<(PerPid, usize)>,
    ring: Option<Arc<RingFill>>,
    /// Each scrape resets and refills the families: two at once must not interleave.
    lock: Mutex<()>,
    /// The state counts of each chunk of the table at the last scrape (`host_families`).
    states: Mutex<Vec<StateCounts>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metrics: {0}")]
    Register(#[from] prometheus::Error),
}

impl Metrics {
    pub fn new(cfg: Config) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let families = Families::register(&registry)?;
        let per_pid = match cfg.per_pid {
            Some(cap) => Some((PerPid::register(&registry)?, cap)),
            None => None,
        };
        // The agent's own CPU, memory and fds, from /proc/self.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "bpfproc",
            ),
        ))?;
        families.ringbuf_size.set(i64::from(cfg.ringbuf_bytes));
        families.map_capacity.set(i64::from(cfg.map_capacity));
        families
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            registry,
            families,
            per_pid,
            ring: cfg.ring,
            lock: Mutex::new(()),
            states: Mutex::default(),
        })
    }

    /// One scrape: fresh numbers from the table, rendered in the text format.
    pub async fn scrape(&self, state: &State, host: &Host) -> Result<Vec<u8>, crate::state::Gone> {
        let started = Instant::now();
        let snap = state.snapshot().await?;
        let stats = state.stats().await?;
        let groups = state.groups().await?;
        Ok(self.render(&snap, &stats, &groups, host, started))
    }

    fn render(
        &self,
        snap: &Snapshot,
        stats: &AgentStats,
        groups: &GroupReport,
        host: &Host,
        started: Instant,
    ) -> Vec<u8> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let f = &self.families;
        host_families(
            f,
            snap,
            &mut self.states.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let set = |c: &IntCounter, v: u64| {
            c.reset();
            c.inc_by(v);
        };
        let t = &stats.table;
        set(&f.forks, t.forks);
        set(&f.execs, t.execs);
        set(&f.exits, t.exits);
        set(&f.lost_exits, t.lost_exits);
        set(&f.backfilled, t.backfilled);
        set(&f.found_by_rescan, t.found_by_rescan);
        set(&f.pid_reuse, t.pid_reuse);
        set(&f.iterator_passes, t.snapshots);
        set(&f.process_reads, stats.process_reads);
        set(&f.partial_refreshes, stats.partial_refreshes);
        set(&f.partial_reads, stats.partial_reads);
        set(&f.reader_parks, stats.reader_parks);
        set(&f.reader_woken, stats.reader_woken);
        set(&f.events_received, stats.events_received);
        set(&f.rescans, stats.rescans);
        set(&f.exits_nonzero, groups.exits.nonzero);
        set(&f.exits_core_dumped, groups.exits.core_dumped);
        set(&f.short_lived, groups.exits.short_lived);
        f.exits_signaled.reset();
        for (sig, n) in &groups.exits.by_signal {
            f.exits_signaled
                .with_label_values(&[&crate::control::signal_name(*sig)])
                .inc_by(*n);
        }
        f.kernel_hook_runs.reset();
        f.events_lost.reset();
        for (name, v) in &stats.kernel {
            if let Some(hook) = name.strip_suffix("_seen") {
                f.kernel_hook_runs.with_label_values(&[hook]).inc_by(*v);
            } else if LOSS_CAUSES.contains(name) {
                f.events_lost.with_label_values(&[name]).inc_by(*v);
            }
        }
        // Every cause is always present, so `rate()` and alerts see 0 rather than no data.
        for cause in LOSS_CAUSES {
            f.events_lost.with_label_values(&[cause]);
        }
        f.fuse_requests.reset();
        for (op, n) in crate::fs::requests() {
            f.fuse_requests.with_label_values(&[op]).inc_by(n);
        }
        let o = crate::otlp::stats();
        set(&f.otlp_exported, o.exported);
        f.otlp_dropped.reset();
        for (cause, n) in [
            ("queue_full", o.dropped_queue_full),
            ("lagged", o.dropped_lagged),
            ("export_failed", o.dropped_export_failed),
        ] {
            f.otlp_dropped.with_label_values(&[cause]).inc_by(n);
        }
        f.map_entries.set(stats.bpf_map_entries as i64);
        f.table_live.set(stats.live_processes as i64);
        f.table_exited.set(stats.exited_retained as i64);
        if let Some(ring) = &self.ring {
            f.ringbuf_used.set(ring.used() as i64);
        }
        group_families(f, groups);
        if let Some((per_pid, cap)) = &self.per_pid {
            per_pid_families(per_pid, *cap, snap, host);
        }
        f.scrape_duration.observe(started.elapsed().as_secs_f64());
        let mut out = Vec::with_capacity(64 << 10);
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding /metrics: {e}");
        }
        out
    }
}

/// How many processes and threads of one chunk of the table are in each state, by letter.
struct StateCounts {
    /// The chunk, kept so that no other chunk can take its address.
    chunk: Arc<Chunk>,
    counts: Vec<(u8, i64, i64)>,
}

/// The processes and threads in each state: counted again only for the chunks of the table
/// that changed since the last scrape (`table::Live`; every process is 8 ms at 100,000).
fn host_families(f: &Families, snap: &Snapshot, cache: &mut Vec<StateCounts>) {
    let old = std::mem::take(cache);
    let same: std::collections::HashMap<*const Chunk, usize> = old
        .iter()
        .enumerate()
        .map(|(i, c)| (Arc::as_ptr(&c.chunk), i))
        .collect();
    let mut procs = [0i64; 128];
    let mut threads = [0i64; 128];
    for chunk in snap.processes.chunks() {
        let counts = match same.get(&Arc::as_ptr(chunk)) {
            Some(&i) => old[i].counts.clone(),
            None => {
                let mut counts: Vec<(u8, i64, i64)> = Vec::new();
                let mut count =
                    |letter: u8, p: i64, t: i64| match counts.iter_mut().find(|c| c.0 == letter) {
                        Some(c) => (c.1, c.2) = (c.1 + p, c.2 + t),
                        None => counts.push((letter, p, t)),
                    };
                for p in chunk.processes() {
                    count(view::process_state(p) as u8, 1, 0);
                    for t in p.tasks.iter() {
                        count(view::state_letter(t.state, t.exit_state) as u8, 0, 1);
                    }
                }
                counts
            }
        };
        for &(letter, p, t) in &counts {
            procs[usize::from(letter & 127)] += p;
            threads[usize::from(letter & 127)] += t;
        }
        cache.push(StateCounts {
            chunk: chunk.clone(),
            counts,
        });
    }
    f.processes.reset();
    f.threads.reset();
    // The common states are always present so dashboards and alerts never see "no data".
    for letter in ['R', 'S', 'D', 'Z', 'T', 'I'] {
        f.processes.with_label_values(&[&letter.to_string()]);
        f.threads.with_label_values(&[&letter.to_string()]);
    }
    for (i, (&p, &t)) in procs.iter().zip(&threads).enumerate() {
        let letter = (i as u8 as char).to_string();
        if p > 0 {
            f.processes.with_label_values(&[&letter]).set(p);
        }
        if t > 0 {
            f.threads.with_label_values(&[&letter]).set(t);
        }
    }
}

fn group_families(f: &Families, r: &GroupReport) {
    for v in [
        &f.group_processes,
        &f.group_threads,
        &f.group_resident,
        &f.group_virtual,
        &f.group_fd_slots,
    ] {
        v.reset();
    }
    f.group_cpu.reset();
    f.group_starts.reset();
    f.group_exits.reset();
    for g in &r.groups {
        let name: &str = &g.name;
        f.group_processes
            .with_label_values(&[name])
            .set(g.processes as i64);
        f.group_threads
            .with_label_values(&[name])
            .set(g.threads as i64);
        f.group_resident
            .with_label_values(&[name])
            .set(g.resident_bytes as i64);
        f.group_virtual
            .with_label_values(&[name])
            .set(g.virtual_bytes as i64);
        f.group_fd_slots
            .with_label_values(&[name])
            .set(g.fd_slots as i64);
        f.group_cpu
            .with_label_values(&[name, "user"])
            .inc_by(g.cpu.user as f64 / 1e9);
        f.group_cpu
            .with_label_values(&[name, "system"])
            .inc_by(g.cpu.system as f64 / 1e9);
        f.group_starts.with_label_values(&[name]).inc_by(g.starts);
        f.group_exits.with_label_values(&[name]).inc_by(g.exits);
    }
}

fn per_pid_families(m: &PerPid, cap: usize, snap: &Snapshot, host: &Host) {
    m.cpu.reset();
    m.resident.reset();
    m.threads.reset();
    let mut live: Vec<_> = snap
        .processes
        .iter()
        .filter(|p| !p.kthread && p.exit.is_none())
        .filter_map(|p| {
            let cpu = crate::groups::cpu_of(p)?;
            Some((p, cpu))
        })
        .collect();
    // The heaviest first, so the cap keeps the processes worth looking at.
    live.sort_by_key(|(p, c)| (std::cmp::Reverse(c.user + c.system), p.pid));
    let dropped = live.len().saturating_sub(cap);
    m.dropped.inc_by(dropped as u64);
    for (p, cpu) in live.into_iter().take(cap) {
        let pid = p.pid.to_string();
        let comm = String::from_utf8_lossy(&p.name()).into_owned();
        m.cpu
            .with_label_values(&[&pid, &comm, "user"])
            .inc_by(cpu.user as f64 / 1e9);
        m.cpu
            .with_label_values(&[&pid, &comm, "system"])
            .inc_by(cpu.system as f64 / 1e9);
        if let Some(t) = p.leader() {
            m.resident
                .with_label_values(&[&pid, &comm])
                .set(((t.rss_anon + t.rss_file + t.rss_shmem) * host.page_size) as i64);
            m.threads
                .with_label_values(&[&pid, &comm])
                .set(i64::from(t.nr_threads));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(crate::control::signal_name(9), "SIGKILL");
        assert_eq!(crate::control::signal_name(15), "SIGTERM");
        assert_eq!(crate::control::signal_name(40), "SIG40");
        assert_eq!(crate::control::signal_name(0), "SIG0");
    }

    #[test]
    fn every_metric_has_help_from_its_doc_comment_and_the_bpfproc_prefix() {
        let m = Metrics::new(Config {
            per_pid: Some(10),
            ringbuf_bytes: 4096,
            map_capacity: 10,
            ring: None,
        })
        .unwrap();
        let families = m.registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for want in [
            "bpfproc_forks_total",
            "bpfproc_scrape_duration_seconds",
            "bpfproc_pid_series_dropped_total",
            "bpfproc_process_cpu_seconds_total",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for fam in &families {
            assert!(fam.name().starts_with("bpfproc_"), "{}", fam.name());
            assert!(!fam.help().is_empty(), "{} has no HELP", fam.name());
            assert!(!fam.help().starts_with(' '), "{}", fam.name());
        }
    }
}

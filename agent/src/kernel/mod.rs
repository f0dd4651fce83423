//! Loading and talking to the BPF programs: attach the scheduler hooks, read the ring buffer,
//! run the task iterator, read the failure counters.

use std::{
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, iter::IterLink},
};
use bpfproc_common::{Event, ExecEvent, ProcEntry, TaskInfo, TaskRecord, kind, pflag, stat};

use crate::btf;

pub mod log;
mod ran;
mod ring_fill;

/// The kernel counters (`AgentStats::kernel`) that mean a record or read was lost.
pub const LOSS_CAUSES: [&str; 5] = [
    "ringbuf_full",
    "map_full",
    "read_error",
    "args_error",
    "iter_error",
];

pub use ran::Marks;
pub use ring_fill::RingFill;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("loading BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("reading BTF for program load: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("task iterator: {0}")]
    Iter(String),
    #[error("reading task iterator: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Capacity of the in-kernel process map.
    pub max_processes: u32,
}

/// The fewest entries the process map is given, whatever the host says.
pub const MIN_PROCESSES: u32 = 65_536;
/// The most: PID_MAX_LIMIT on 64-bit kernels, so no host can have more processes.
pub const MAX_PROCESSES: u32 = 4_194_304;

/// A process map capacity for this host: every process has a thread, so `threads-max` bounds
/// their number (pid_max can be raised at run time, and is only a bound on ids); within
/// [`MIN_PROCESSES`, `MAX_PROCESSES`].
pub fn host_capacity() -> u32 {
    let threads_max = std::fs::read_to_string("/proc/sys/kernel/threads-max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(u64::from(MIN_PROCESSES));
    capacity_for(threads_max)
}

fn capacity_for(threads_max: u64) -> u32 {
    threads_max.clamp(u64::from(MIN_PROCESSES), u64::from(MAX_PROCESSES)) as u32
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            ringbuf_bytes: 2 << 20,
            max_processes: 65536,
        }
    }
}

/// In attach order: the hooks that remove map entries before the ones that create them, so
/// no process can get an entry from its fork while its exit still goes unseen. (Attaching
/// fork first left an entry behind for every process that forked, exec'd and exited in the
/// ~200 ms the other programs took to verify.)
const HOOKS: [(&str, &str); 5] = [
    ("sched_process_exit", "sched_process_exit"),
    ("sched_process_free", "sched_process_free"),
    ("task_rename", "task_rename"),
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_fork", "sched_process_fork"),
];

/// The hooks that mark which processes ran (ebpf/src/ran.rs), attached with the others.
const RAN_HOOKS: [&str; 4] = [
    "sched_switch",
    "sched_wakeup",
    "sched_wakeup_new",
    "cgroup_attach_task",
];

/// The kernel's lock, taken even if a panic left it poisoned: a pass that panicked took the
/// iterator's descriptor with it, and the kernel behind the lock is still whole.
pub fn lock<K>(kernel: &Mutex<K>) -> std::sync::MutexGuard<'_, K> {
    kernel
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ring reader's parking flag (ebpf/src/main.rs `READER_PARKED`): set, the next record
/// submitted wakes the reader and clears it. A map update costs a syscall, and a reader parks
/// and un-parks at most once per lull.
pub struct Parking(aya::maps::Array<MapData, u32>);

impl Parking {
    pub fn set(&mut self, parked: bool) -> Result<(), KernelError> {
        self.0
            .set(0, &u32::from(parked), 0)
            .map_err(|source| KernelError::Map {
                name: "READER_PARKED",
                source,
            })
    }
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Kernel {
    ebpf: Ebpf,
    /// The programs' log, until `take_logger`.
    logger: Option<log::Logger>,
    iter_link: Option<IterLinkHolder>,
}

/// The attached iterator's link (aya's handle, and our own fd to the same link, since aya does
/// not expose its fd); each snapshot creates a fresh iterator fd from it.
struct IterLinkHolder {
    _link: aya::programs::links::FdLink,
    fd: std::os::fd::OwnedFd,
    /// The program, for the links `TaskReader` makes for one process each.
    prog: OwnedFd,
}

impl Kernel {
    /// Loads the object, resolves offsets from the running kernel's BTF and attaches the
    /// hooks. Events flow into the ring buffer from the moment this returns.
    pub fn load(cfg: &KernelConfig) -> Result<Self, KernelError> {
        let vmlinux = btf::Btf::from_file(btf::VMLINUX)?;
        let offsets = btf::resolve(&vmlinux)?;
        // How to find each CPU's per-CPU offset from a runqueue pointer (see ebpf/src/iter.rs);
        // 0 disables the per-CPU part of the rss sums.
        let rq_to_this_cpu_off =
            btf::percpu_distance(&vmlinux, "runqueues", "this_cpu_off").unwrap_or(0);
        let nr_cpus = possible_cpus();
        drop(vmlinux);
        let wake_bytes: u64 = u64::from(cfg.ringbuf_bytes) / 4;
        let log_level = log::level();
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKE_BYTES", &wake_bytes, true)
            .override_global("RQ_TO_THIS_CPU_OFF", &rq_to_this_cpu_off, true)
            .override_global("NR_CPUS", &nr_cpus, true)
            // Not there if no log statement survived compilation.
            .override_global(aya_log::LEVEL, &log_level, false)
            .map_max_entries("EVENTS", cfg.ringbuf_bytes)
            .map_max_entries("PROCS", cfg.max_processes)
            .map_max_entries("RAN", ran_chunks())
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/bpfproc"
            )))?;
        let logger = log::Logger::take(&mut ebpf, log_level);
        let mut kernel = Self {
            ebpf,
            logger,
            iter_link: None,
        };
        let aya_btf = Btf::from_sys_fs()?;
        let hooks = HOOKS.iter().copied().chain(RAN_HOOKS.map(|h| (h, h)));
        for (prog, tp) in hooks.clone() {
            let p: &mut BtfTracePoint = kernel
                .ebpf
                .program_mut(prog)
                .ok_or(KernelError::Iter(format!(
                    "program {prog} missing from object"
                )))?
                .try_into()
                .map_err(|source| KernelError::Program { name: prog, source })?;
            p.load(tp, &aya_btf)
                .map_err(|source| KernelError::Program { name: prog, source })?;
        }
        // Verified first, attached together: the window between the first and last attach
        // is microseconds, not the verifier's time.
        for (prog, _) in hooks {
            let p: &mut BtfTracePoint = kernel
                .ebpf
                .program_mut(prog)
                .and_then(|p| p.try_into().ok())
                .ok_or(KernelError::Iter(format!(
                    "program {prog} missing from object"
                )))?;
            p.attach()
                .map_err(|source| KernelError::Program { name: prog, source })?;
        }
        let iter: &mut Iter = kernel
            .ebpf
            .program_mut("dump_task")
            .ok_or(KernelError::Iter("program dump_task missing".into()))?
            .try_into()
            .map_err(|source| KernelError::Program {
                name: "dump_task",
                source,
            })?;
        iter.load("task", &aya_btf)
            .map_err(|source| KernelError::Program {
                name: "dump_task",
                source,
            })?;
        let prog = iter
            .fd()
            .map_err(|source| KernelError::Program {
                name: "dump_task",
                source,
            })?
            .as_fd()
            .try_clone_to_owned()?;
        let link_id = iter.attach().map_err(|source| KernelError::Program {
            name: "dump_task",
            source,
        })?;
        let link: IterLink = iter
            .take_link(link_id)
            .map_err(|source| KernelError::Program {
                name: "dump_task",
                source,
            })?;
        let fd_link: aya::programs::links::FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| KernelError::Iter(e.to_string()))?;
        let id = fd_link
            .info()
            .map_err(|e| KernelError::Iter(e.to_string()))?
            .id();
        let fd = bpf_cmd(BPF_LINK_GET_FD_BY_ID, &[id, 0, 0])?;
        kernel.iter_link = Some(IterLinkHolder {
            _link: fd_link,
            fd,
            prog,
        });
        Ok(kernel)
    }

    /// Takes the ring buffer out of the object so a reader task can own it.
    /// The programs' log, if it is on (kernel/log.rs): `log::forward` reads it.
    pub fn take_logger(&mut self) -> Option<log::Logger> {
        self.logger.take()
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(KernelError::Iter("EVENTS map missing".into()))?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// The switch that parks the ring reader (`Parking`). Once only: the map leaves the object.
    pub fn parking(&mut self) -> Result<Parking, KernelError> {
        let map = self
            .ebpf
            .take_map("READER_PARKED")
            .ok_or(KernelError::Iter("READER_PARKED map missing".into()))?;
        aya::maps::Array::try_from(map)
            .map(Parking)
            .map_err(|source| KernelError::Map {
                name: "READER_PARKED",
                source,
            })
    }

    /// The marks of which processes ran (`Marks`), for a refresher that needs neither this
    /// struct nor its lock. Once only: the maps leave the object.
    pub fn marks(&mut self) -> Result<Marks, KernelError> {
        let mut take = |name: &'static str| match self.ebpf.take_map(name) {
            Some(aya::maps::Map::Array(m) | aya::maps::Map::PerCpuArray(m)) => Ok(m),
            _ => Err(KernelError::Iter(format!("{name} map missing"))),
        };
        let ran = take("RAN")?;
        Marks::new(ran, take("RAN_SUMMARY")?, take("ON_CPU")?)
    }

    /// One pass of the task iterator over every task on the host, threads included, each
    /// record handed to `each` as it is read (a pass at 100,000 tasks held 115 MB of records
    /// at once, and doubled the agent's memory for as long as it took); returns how many there
    /// were. With `backfill`, processes that have no entry in the process map get one (the
    /// sweep after the first pass, and the periodic ones).
    pub fn tasks(
        &mut self,
        backfill: bool,
        each: &mut dyn FnMut(&TaskRecord),
    ) -> Result<usize, KernelError> {
        let mut ctl: aya::maps::Array<&mut MapData, u32> = self
            .ebpf
            .map_mut("ITER_CTL")
            .ok_or(KernelError::Iter("ITER_CTL missing".into()))?
            .try_into()
            .map_err(|source| KernelError::Map {
                name: "ITER_CTL",
                source,
            })?;
        ctl.set(0, &u32::from(backfill), 0)
            .map_err(|source| KernelError::Map {
                name: "ITER_CTL",
                source,
            })?;
        let holder = self
            .iter_link
            .as_ref()
            .ok_or(KernelError::Iter("iterator not attached".into()))?;
        let fd = bpf_cmd(BPF_ITER_CREATE, &[holder.fd.as_raw_fd() as u32, 0])?;
        let mut buf = vec![0u8; 64 * size_of::<TaskRecord>()];
        read_records(fd, &mut buf, each)
    }

    /// A reader of one process's tasks that needs neither this struct nor its lock.
    pub fn task_reader(&self) -> Result<TaskReader, KernelError> {
        let prog = self
            .iter_link
            .as_ref()
            .ok_or(KernelError::Iter("iterator not attached".into()))?
            .prog
            .try_clone()?;
        Ok(TaskReader {
            prog,
            links: Mutex::default(),
        })
    }

    /// A reader of the failure and activity counters that needs neither this struct nor its
    /// lock, which a pass holds for as long as it runs.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let fd = match self.ebpf.map("STATS") {
            Some(aya::maps::Map::PerCpuArray(m)) => m.fd().as_fd().try_clone_to_owned()?,
            _ => return Err(KernelError::Iter("STATS missing".into())),
        };
        let map = |source| KernelError::Map {
            name: "STATS",
            source,
        };
        let data = MapData::from_fd(fd).map_err(map)?;
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map(Counters)
            .map_err(map)
    }

    /// Keys of the in-kernel process map.
    pub fn map_pids(&self) -> Result<Vec<u32>, KernelError> {
        let map = self
            .ebpf
            .map("PROCS")
            .ok_or(KernelError::Iter("PROCS missing".into()))?;
        let procs: HashMap<&MapData, u32, ProcEntry> =
            HashMap::try_from(map).map_err(|source| KernelError::Map {
                name: "PROCS",
                source,
            })?;
        Ok(procs.keys().filter_map(Result::ok).collect())
    }

    /// Sets and clears `pflag` bits of `pid`'s entry in the process map (the stop-on-exec
    /// bit, `pflag::HANG`), creating the entry if the process has none yet, and returns the
    /// new flags. The read-modify-write can race an exec rewriting the same entry; the exec's
    /// own record has already gone out through the ring, so at worst the map keeps the
    /// pre-exec argv for the next fork's copy, and the flags written are still ours.
    ///
    /// It can also race the exit hook removing the entry; the write must then not bring the
    /// entry back for a process that is gone, so an existing entry is only updated in place
    /// and a created one is withdrawn if the process has exited by the time it is in.
    pub fn set_flags(&mut self, pid: u32, set: u32, clear: u32) -> Result<u32, KernelError> {
        const BPF_NOEXIST: u64 = 1;
        const BPF_EXIST: u64 = 2;
        let mut procs = self.procs_mut()?;
        let mut attempts = 0;
        loop {
            let (mut entry, how) = match procs.get(&pid, 0) {
                Ok(e) => (e, BPF_EXIST),
                Err(aya::maps::MapError::KeyNotFound) => {
                    // SAFETY: ProcEntry is plain integers and byte arrays; all zeroes is valid.
                    let mut e: ProcEntry = unsafe { std::mem::zeroed() };
                    e.task.tgid = pid;
                    e.task.tid = pid;
                    // Which process the flags are for, to the tick /proc reports: the next
                    // agent carries them over only to that process (`carry_hang`).
                    e.task.start_boottime =
                        crate::procfs::start_boottime(pid, crate::sys::clock::ns_per_tick())
                            .unwrap_or(0);
                    (e, BPF_NOEXIST)
                }
                Err(source) => {
                    return Err(KernelError::Map {
                        name: "PROCS",
                        source,
                    });
                }
            };
            entry.task.flags = (entry.task.flags | set) & !clear;
            match procs.insert(&pid, &entry, how) {
                Ok(()) => {
                    if how == BPF_NOEXIST && !crate::procfs::alive(pid) {
                        let _ = procs.remove(&pid);
                    }
                    return Ok(entry.task.flags);
                }
                // The exit hook removed the entry: the process is gone, and so are its flags.
                Err(aya::maps::MapError::SyscallError(e))
                    if how == BPF_EXIST && e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Ok(entry.task.flags);
                }
                // A fork or exec made the entry meanwhile: update that one instead.
                Err(aya::maps::MapError::SyscallError(e))
                    if how == BPF_NOEXIST
                        && e.io_error.raw_os_error() == Some(libc::EEXIST)
                        && attempts < 3 =>
                {
                    attempts += 1;
                }
                Err(source) => {
                    return Err(KernelError::Map {
                        name: "PROCS",
                        source,
                    });
                }
            }
        }
    }

    /// A descriptor of the process map (its own copy), to keep it across this agent's end:
    /// the next agent reads the hang bits from it (`carry_hang`).
    pub fn procs_fd(&self) -> Result<OwnedFd, KernelError> {
        match self.ebpf.map("PROCS") {
            Some(aya::maps::Map::HashMap(map)) => Ok(map.fd().as_fd().try_clone_to_owned()?),
            _ => Err(KernelError::Iter("PROCS missing".into())),
        }
    }

    /// Sets the hang bit, in this agent's process map, of each process whose entry has it in
    /// `old`, the process map of an agent before this one, when that entry is still the same
    /// process's (its start time, to the tick /proc reports): a reused pid never gets it.
    /// Returns the pids whose bit was carried.
    pub fn carry_hang(&mut self, old: OwnedFd) -> Result<Vec<u32>, KernelError> {
        let map = |source| KernelError::Map {
            name: "PROCS (kept)",
            source,
        };
        let old = aya::maps::Map::from_map_data(MapData::from_fd(old).map_err(map)?)
            .and_then(HashMap::<MapData, u32, ProcEntry>::try_from)
            .map_err(map)?;
        let tick = crate::sys::clock::ns_per_tick();
        let entries = old
            .iter()
            .filter_map(Result::ok)
            .map(|(pid, e)| (pid, e.task.flags, e.task.start_boottime));
        let pids = carried(entries, |pid, start| {
            crate::procfs::alive_since(pid, start, tick)
        });
        for &pid in &pids {
            self.set_flags(pid, pflag::HANG, 0)?;
        }
        Ok(pids)
    }

    /// The process map, writable.
    fn procs_mut(&mut self) -> Result<HashMap<&mut MapData, u32, ProcEntry>, KernelError> {
        let map = self
            .ebpf
            .map_mut("PROCS")
            .ok_or(KernelError::Iter("PROCS missing".into()))?;
        HashMap::try_from(map).map_err(|source| KernelError::Map {
            name: "PROCS",
            source,
        })
    }

    /// Drops map entries of processes that are gone: the iterator (which began at boot-clock
    /// `started`) did not see them and they began before it. An entry can outlive its process
    /// when the iterator's backfill insert races the exit. Returns how many were dropped, and
    /// the keys that remain.
    pub fn gc(
        &mut self,
        seen: &std::collections::HashSet<u32>,
        started: u64,
    ) -> Result<(usize, Vec<u32>), KernelError> {
        let mut procs = self.procs_mut()?;
        let mut kept = Vec::new();
        let mut stale = Vec::new();
        for (pid, e) in procs.iter().filter_map(Result::ok) {
            if !seen.contains(&pid) && e.task.start_boottime < started {
                stale.push(pid);
            } else {
                kept.push(pid);
            }
        }
        for pid in &stale {
            let _ = procs.remove(pid);
        }
        Ok((stale.len(), kept))
    }
}

/// The pids among `entries` (a process map's pid, flags and start time) whose hang bit goes
/// to the next agent: those with the bit whose entry says when its process started and
/// `same(pid, start)` says it still runs. An entry with no start time proves nothing.
fn carried(
    entries: impl Iterator<Item = (u32, u32, u64)>,
    same: impl Fn(u32, u64) -> bool,
) -> Vec<u32> {
    entries
        .filter(|&(pid, flags, start)| flags & pflag::HANG != 0 && start != 0 && same(pid, start))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Elements of the `RAN` map: a byte for every pid there can be (`PID_MAX_LIMIT`, 4 MB), not
/// only up to `pid_max`: that can be raised at run time, and processes can outlive a lowering,
/// and a pid beyond the map would make every refresh a pass (as it did on a machine whose
/// `pid_max` benchmarks raise and put back). Reading them all costs the agent ~0.3 ms a refresh.
fn ran_chunks() -> u32 {
    MAX_PROCESSES.div_ceil(bpfproc_common::RAN_CHUNK as u32)
}

/// The kernel side's failure and activity counters (`Kernel::counters`).
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    /// Each counter summed over CPUs, in `stat` index order.
    pub fn read(&self) -> Result<[u64; stat::COUNT as usize], KernelError> {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .0
                .get(&(i as u32), 0)
                .map_err(|source| KernelError::Map {
                    name: "STATS",
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// Number of possible CPUs (highest id in /sys/devices/system/cpu/possible, plus one).
fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split([',', '-'])
                .filter_map(|n| n.parse::<u32>().ok())
                .max()
        })
        .map_or(1, |m| m + 1)
}

/// Runs the task iterator over the threads of one process only (`bpf_iter_link_info.task.pid`,
/// Linux 6.1): what an open of one process's file needs costs that process's threads, not a
/// pass over the whole host.
pub struct TaskReader {
    prog: OwnedFd,
    /// The iterator links of recently read pids. A link names a pid, not a process, so it
    /// serves a reused pid's new process too (the caller checks which process it got); reusing
    /// one saves its creation and teardown, ~40 % of a read.
    links: Mutex<std::collections::HashMap<u32, Arc<OwnedFd>>>,
}

/// Links kept before all are dropped; each is a descriptor and a small kernel object.
const LINKS_KEPT: usize = 4096;

impl TaskReader {
    /// The records of `pid`'s threads, in the iterator's order; empty if no such process.
    pub fn process(&self, pid: u32) -> Result<Vec<TaskRecord>, KernelError> {
        let link = self.link(pid)?;
        let fd = bpf_cmd(BPF_ITER_CREATE, &[link.as_raw_fd() as u32, 0])?;
        let mut buf = [0u8; 8 * size_of::<TaskRecord>()];
        let mut out = Vec::with_capacity(1);
        read_records(fd, &mut buf, &mut |t| out.push(*t))?;
        if out.is_empty()
            && let Ok(mut links) = self.links.lock()
        {
            links.remove(&pid);
        }
        Ok(out)
    }

    fn link(&self, pid: u32) -> Result<Arc<OwnedFd>, KernelError> {
        if let Some(l) = self.links.lock().ok().and_then(|l| l.get(&pid).cloned()) {
            return Ok(l);
        }
        // struct bpf_iter_link_info { struct { u32 tid, pid, pid_fd; } task; }
        let info = [0u32, pid, 0];
        let ptr = info.as_ptr() as u64;
        let link = Arc::new(bpf_cmd(
            BPF_LINK_CREATE,
            &[
                self.prog.as_raw_fd() as u32,
                0,
                BPF_TRACE_ITER,
                0,
                ptr as u32,
                (ptr >> 32) as u32,
                size_of_val(&info) as u32,
            ],
        )?);
        if let Ok(mut links) = self.links.lock() {
            if links.len() >= LINKS_KEPT {
                links.clear();
            }
            links.insert(pid, link.clone());
        }
        Ok(link)
    }
}

/// Reads an iterator's records as they arrive through one small buffer, handing each to
/// `each`; returns how many there were.
fn read_records(
    fd: OwnedFd,
    buf: &mut [u8],
    each: &mut dyn FnMut(&TaskRecord),
) -> Result<usize, KernelError> {
    const REC: usize = size_of::<TaskRecord>();
    let mut file = std::fs::File::from(fd);
    let (mut have, mut count) = (0, 0);
    loop {
        let n = file.read(&mut buf[have..])?;
        if n == 0 {
            break;
        }
        have += n;
        let (chunks, _) = buf[..have].as_chunks::<REC>();
        for chunk in chunks {
            // SAFETY: TaskRecord is repr(C) plain data written by our own program, and
            // read_unaligned copes with the buffer's byte alignment.
            let mut t = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<TaskRecord>()) };
            scrub(&mut t);
            each(&t);
        }
        count += chunks.len();
        let used = chunks.len() * REC;
        buf.copy_within(used..have, 0);
        have -= used;
    }
    Ok(count)
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TRACE_ITER: u32 = 28;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_ITER_CREATE: libc::c_long = 33;

/// Zeroes what the record's length fields say is unused: the bytes after a name's NUL and
/// the groups past `ngroups` can hold whatever the per-CPU buffer held before, and two passes
/// over a process that did not change must give identical records (the table compares them).
fn scrub(t: &mut TaskRecord) {
    fn after_nul(s: &mut [u8]) {
        if let Some(n) = s.iter().position(|&b| b == 0) {
            s[n..].fill(0);
        }
    }
    after_nul(&mut t.comm);
    after_nul(&mut t.full_name);
    after_nul(&mut t.wq_desc);
    let n = (t.ngroups as usize).min(t.groups.len());
    t.groups[n..].fill(0);
}

/// A bpf(2) command whose attribute is a few u32s and whose result is a new fd. Raw: nix has
/// no bpf(2), and aya has no BPF_LINK_CREATE with an iterator's `bpf_iter_link_info` (the
/// iterator narrowed to one process), nor BPF_ITER_CREATE or BPF_LINK_GET_FD_BY_ID.
fn bpf_cmd(cmd: libc::c_long, words: &[u32]) -> Result<std::os::fd::OwnedFd, KernelError> {
    let mut attr = [0u32; 32];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: attr outlives the call and is larger than any union member these commands read.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(&attr) as u32) };
    if fd < 0 {
        return Err(KernelError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// A decoded ring-buffer record.
#[derive(Clone, Debug)]
pub enum KernelEvent {
    /// `cgroup_id` here and in `Exec` and `Exit`: the process's cgroup v2 at the event (0: the
    /// kernel side could not read it).
    Fork {
        ts: u64,
        forker: u32,
        task: TaskInfo,
        cgroup_id: u64,
    },
    Exec {
        ts: u64,
        entry: Box<ProcEntry>,
        cgroup_id: u64,
    },
    Exit {
        ts: u64,
        task: TaskInfo,
        cgroup_id: u64,
    },
    Free {
        ts: u64,
        pid: u32,
        start_boottime: u64,
    },
    Rename {
        ts: u64,
        pid: u32,
        start_boottime: u64,
        comm: [u8; 16],
    },
}

impl KernelEvent {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        let read_event = || -> Option<Event> {
            (bytes.len() >= size_of::<Event>())
                // SAFETY: length checked; Event is repr(C) plain data.
                .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
        };
        Some(match kind {
            kind::FORK => {
                let e = read_event()?;
                KernelEvent::Fork {
                    ts: e.ts,
                    forker: e.aux,
                    task: e.task,
                    cgroup_id: e.cgroup_id,
                }
            }
            kind::EXEC => {
                if bytes.len() < size_of::<ExecEvent>() {
                    return None;
                }
                // SAFETY: as above.
                let e = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ExecEvent>()) };
                KernelEvent::Exec {
                    ts: e.ts,
                    entry: Box::new(e.entry),
                    cgroup_id: e.cgroup_id,
                }
            }
            kind::EXIT => {
                let e = read_event()?;
                KernelEvent::Exit {
                    ts: e.ts,
                    task: e.task,
                    cgroup_id: e.cgroup_id,
                }
            }
            kind::FREE => {
                let e = read_event()?;
                KernelEvent::Free {
                    ts: e.ts,
                    pid: e.task.tgid,
                    start_boottime: e.task.start_boottime,
                }
            }
            kind::RENAME => {
                let e = read_event()?;
                KernelEvent::Rename {
                    ts: e.ts,
                    pid: e.task.tgid,
                    start_boottime: e.task.start_boottime,
                    comm: e.task.comm,
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_map_holds_every_thread_the_host_allows_within_bounds() {
        assert_eq!(capacity_for(192_724), 192_724);
        assert_eq!(capacity_for(1_000), MIN_PROCESSES);
        assert_eq!(capacity_for(u64::MAX), MAX_PROCESSES);
    }

    #[test]
    fn a_hang_bit_is_carried_only_to_the_process_it_was_set_for() {
        let entries = [
            (10, pflag::HANG | pflag::EXECED, 500),
            // The pid was reused: the process running under it started later.
            (11, pflag::HANG, 600),
            (12, pflag::EXECED, 700),
            // No start time recorded.
            (13, pflag::HANG, 0),
            // Gone.
            (14, pflag::HANG, 900),
        ];
        let running = |pid| match pid {
            10 => Some(500),
            11 => Some(650),
            12 => Some(700),
            13 => Some(0),
            _ => None,
        };
        let same = |pid, start| running(pid) == Some(start);
        assert_eq!(carried(entries.into_iter(), same), [10]);
    }
}

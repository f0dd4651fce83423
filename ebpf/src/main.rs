//! bpfproc's kernel side: a live process table in BPF maps, kept by the scheduler's fork, exec,
//! exit and free events, streamed to user space through a ring buffer; and a task iterator that
//! dumps every task for backfill and for refreshing the fast-changing numbers.
#![no_std]
#![no_main]

mod exe;
mod exec;
mod exit;
mod fork;
mod iter;
mod kread;
mod ran;
mod rename;

use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use bpfproc_common::{Offsets, ProcEntry, RAN_CHUNK, TaskRecord, stat};

/// Kernel structure offsets from BTF, set by the agent at load time.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::zeroed();

/// Force a reader wake-up once this many bytes are waiting; below it, records are submitted
/// without a wake-up and the agent drains on a timer. Waking on every record slowed a spawn
/// storm by ~20 %; this costs ~1 %.
#[unsafe(no_mangle)]
static WAKE_BYTES: u64 = 0;

/// `this_cpu_off` minus `runqueues` in the per-CPU section: from CPU c's runqueue (a real
/// pointer) this finds CPU c's `this_cpu_off`, whose value is CPU c's per-CPU offset.
#[unsafe(no_mangle)]
static RQ_TO_THIS_CPU_OFF: i64 = 0;

/// Possible CPUs; the per-CPU rss deltas of CPUs up to this are summed.
#[unsafe(no_mangle)]
static NR_CPUS: u32 = 1;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// The live process table, keyed by tgid. Not preallocated: most hosts use a small fraction of
/// the capacity, and the value carries argv.
#[map]
static PROCS: HashMap<u32, ProcEntry> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-CPU scratch space for values too large for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<ProcEntry> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU space for the executable's path while exe.rs walks it.
#[map]
static PATH_SCRATCH: PerCpuArray<[u8; 512]> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's per-CPU offset (`__per_cpu_offset[cpu]`), learnt by the iterator; 0 = not yet.
#[map]
static PCPU_OFF: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::with_max_entries(MAX_CPUS, 0);

pub(crate) const MAX_CPUS: u32 = 256;

/// Slot 0: whether this iterator pass gives processes missing from `PROCS` their entry. The
/// agent asks for it on the sweep that follows its first pass and on its periodic sweeps
/// only: the hash lookup per task was a quarter of a pass's cost, and between sweeps the hooks
/// keep the map whole.
#[map]
pub(crate) static ITER_CTL: aya_ebpf::maps::Array<u32> =
    aya_ebpf::maps::Array::with_max_entries(1, 0);

/// One byte per process (by tgid), set when one of its tasks stops running (ran.rs); the agent
/// maps it, and swaps each set byte back to 0 as it reads the process again. Sized at load for
/// every pid there can be.
#[map]
pub(crate) static RAN: aya_ebpf::maps::Array<[u8; RAN_CHUNK]> =
    aya_ebpf::maps::Array::with_max_entries(1, BPF_F_MMAPABLE);

/// One byte per `RAN` element (a chunk of `RAN_CHUNK` pids), set after a byte in that chunk
/// is: the agent looks only at the chunks marked here, not at a byte for every pid the kernel
/// allows (4 MB, and 9 ms to scan cold, where `pid_max` is 4,194,304).
#[map]
pub(crate) static RAN_SUMMARY: aya_ebpf::maps::Array<[u8; RAN_CHUNK]> =
    aya_ebpf::maps::Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The process each CPU runs now, by tgid: it has not stopped running, so its byte in `RAN`
/// may not be set, and yet its numbers move.
#[map]
pub(crate) static ON_CPU: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: non-zero while the agent's ring reader is parked (it found the ring empty for a
/// while and stopped polling it on a timer). The next record clears it and wakes the reader,
/// so an idle host costs the agent no wake-ups and the first record after a lull is read at
/// once.
#[map]
static READER_PARKED: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::with_max_entries(1, 0);

#[map]
static ITER_SCRATCH: PerCpuArray<TaskRecord> = PerCpuArray::with_max_entries(1, 0);

/// Reads one offset; volatile so the compiler does not fold the zero the object ships with.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&crate::OFFSETS.$field) }
    };
}
pub(crate) use off;

/// A hook's failure: counted, and, when the agent asked for the programs' log at load time,
/// logged with the process and the counter's name (aya-log, at debug). Off, the log statement
/// is a branch on frozen read-only data (`AYA_LOG_LEVEL`) that the verifier removes. A macro,
/// so the record's target is the hook's module.
macro_rules! failed {
    ($ctx:expr, $task:expr, $counter:expr) => {{
        let counter: u32 = $counter;
        crate::bump(counter);
        let tgid: u32 = crate::kread::ld($task, crate::off!(task_tgid));
        aya_log_ebpf::debug!(
            $ctx,
            "pid {}: {} (counted)",
            tgid,
            crate::stat_name(counter)
        );
    }};
}
pub(crate) use failed;

/// A failure counter's name, as `/v1/stats` shows it.
#[inline(always)]
pub(crate) fn stat_name(counter: u32) -> &'static str {
    match counter {
        stat::RINGBUF_FULL => "ringbuf_full",
        stat::MAP_FULL => "map_full",
        stat::READ_ERROR => "read_error",
        stat::ARGS_ERROR => "args_error",
        stat::ITER_ERROR => "iter_error",
        _ => "other",
    }
}

pub(crate) fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // Per-CPU value: no other writer can race with us on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Flags for a ring-buffer submit: wake the reader only when a backlog has built up, or when
/// it is parked (then this record un-parks it; two CPUs racing here both wake it, harmlessly).
pub(crate) fn wake_flags() -> u64 {
    if let Some(parked) = READER_PARKED.get_ptr_mut(0) {
        // SAFETY: a valid pointer into the array's only slot; a u32 store is atomic.
        unsafe {
            if core::ptr::read_volatile(parked) != 0 {
                core::ptr::write_volatile(parked, 0);
                return BPF_RB_FORCE_WAKEUP as u64;
            }
        }
    }
    let threshold = unsafe { core::ptr::read_volatile(&WAKE_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

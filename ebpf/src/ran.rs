//! Which processes ran. A refresh of the table's numbers reads again only the processes one of
//! whose tasks stopped running, was woken or was moved to another cgroup since the last
//! refresh, and those running now: a task that did none of these since it was last read still
//! has the numbers it had then (what another process can change in it meanwhile, such as pages
//! reclaimed, is left to the periodic pass; README, "How it works").
//!
//! `sched_switch` is the hottest tracepoint there is, so these programs do nothing else: a
//! byte store, skipped when the byte is already set, and one per-CPU store. Measured under a
//! context-switch storm in docs/performance.md.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use bpfproc_common::RAN_CHUNK;

use crate::{ON_CPU, RAN, RAN_SUMMARY, kread::ld, off};

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    mark(ld(prev, off!(task_tgid)));
    let running: u32 = ld(next, off!(task_tgid));
    if let Some(slot) = ON_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot, and nothing else runs on this CPU meanwhile.
        unsafe { *slot = running };
    }
    0
}

/// A task woken is runnable (`R`) before it runs: its state changed though it did not run.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    mark(ld(ctx.arg::<*const u8>(0), off!(task_tgid)));
    0
}

/// A new task's first wake-up: a process just forked has numbers before it first runs.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    mark(ld(ctx.arg::<*const u8>(0), off!(task_tgid)));
    0
}

/// Another process (systemd, a container runtime) moved this one to another cgroup.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    mark(ld(ctx.arg::<*const u8>(2), off!(task_tgid)));
    0
}

/// Sets `tgid`'s byte in `RAN`, unless it is set already (a store would take the cache line
/// from the agent, which clears bytes), and then its chunk's byte in `RAN_SUMMARY`, likewise.
/// tgid 0 is the idle task, never marked: its byte instead records that a process's byte was
/// beyond the map (which the agent sizes for every pid the kernel allows), and the next
/// refresh reads every process.
///
/// The order is what the agent relies on: it clears a chunk's summary byte before the chunk's
/// bytes, so a byte set after it looked at the chunk has its summary set again for the next
/// look, and a byte whose store was skipped was set already, its summary with it.
#[inline(always)]
fn mark(tgid: u32) {
    if tgid == 0 {
        return;
    }
    let chunk = RAN_CHUNK as u32;
    let (slot, index, byte) = match RAN.get_ptr_mut(tgid / chunk) {
        Some(c) => (c, tgid / chunk, (tgid % chunk) as usize),
        None => match RAN.get_ptr_mut(0) {
            Some(c) => (c, 0, 0),
            None => return,
        },
    };
    // SAFETY: `byte` is below RAN_CHUNK, within the map value; `index` is below RAN's entries,
    // at most RAN_CHUNK of them (the agent sizes it). Byte stores from several CPUs to one word
    // lose none of them, and the agent clears bytes with an atomic swap.
    unsafe {
        let b = (*slot).as_mut_ptr().add(byte);
        if core::ptr::read_volatile(b) != 0 {
            return;
        }
        core::ptr::write_volatile(b, 1);
        if let Some(summary) = RAN_SUMMARY.get_ptr_mut(0) {
            let s = (*summary).as_mut_ptr().add(index as usize % RAN_CHUNK);
            if core::ptr::read_volatile(s) == 0 {
                core::ptr::write_volatile(s, 1);
            }
        }
    }
}

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use bpfproc_common::{Event, ProcEntry, kind, pflag, stat};

use crate::{
    EVENTS, PROCS, SCRATCH, bump, failed,
    kread::{Fail, cgroup_id, ld, task_info},
    off, wake_flags,
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if let Err(counter) = try_fork(&ctx) {
        failed!(&ctx, ctx.arg::<*const u8>(1), counter);
    }
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), Fail> {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let tid: u32 = ld(child, off!(task_pid));
    let tgid: u32 = ld(child, off!(task_tgid));
    if tid != tgid {
        // A new thread: the process already has its entry; the iterator counts threads.
        return Ok(());
    }
    bump(stat::FORK_SEEN);
    let entry = SCRATCH.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
    let entry = unsafe { &mut *entry };
    // The child is a copy of the forking process: same argv, same exec'd file, same hang bit.
    let forker: u32 = ld(parent, off!(task_tgid));
    match PROCS.get_ptr(&forker) {
        Some(p) => unsafe {
            bpf_probe_read_kernel(
                (entry as *mut ProcEntry).cast(),
                size_of::<ProcEntry>() as u32,
                p.cast(),
            );
            entry.task.flags &= !pflag::BACKFILLED;
        },
        None => {
            entry.task.flags = 0;
            entry.exec_ts = 0;
            entry.filename_len = 0;
            entry.args_len = 0;
        }
    }
    task_info(child, &mut entry.task)?;
    entry.task.exit_code = 0;
    if PROCS.insert(&tgid, entry, 0).is_err() {
        bump(stat::MAP_FULL);
    }
    let Some(mut rec) = EVENTS.reserve::<Event>(0) else {
        return Err(stat::RINGBUF_FULL);
    };
    let ev = unsafe { &mut *rec.as_mut_ptr() };
    ev.kind = kind::FORK;
    ev.aux = forker;
    ev.ts = unsafe { bpf_ktime_get_boot_ns() };
    // The child's own: in its parent's cgroup, or the one clone3(CLONE_INTO_CGROUP) named.
    ev.cgroup_id = cgroup_id(child);
    ev.task = entry.task;
    rec.submit(wake_flags());
    Ok(())
}

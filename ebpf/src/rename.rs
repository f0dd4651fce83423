use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use bpfproc_common::{Event, kind, stat};

use crate::{
    EVENTS, bump, failed,
    kread::{Fail, ld},
    off, wake_flags,
};

/// comm changes (prctl(PR_SET_NAME), kthread renames) keep the mirrored names exact.
#[btf_tracepoint(function = "task_rename")]
pub fn task_rename(ctx: BtfTracePointContext) -> i32 {
    if let Err(counter) = try_rename(&ctx) {
        failed!(&ctx, ctx.arg::<*const u8>(0), counter);
    }
    0
}

fn try_rename(ctx: &BtfTracePointContext) -> Result<(), Fail> {
    let task: *const u8 = ctx.arg(0);
    let comm: *const u8 = ctx.arg(1);
    let tid: u32 = ld(task, off!(task_pid));
    let tgid: u32 = ld(task, off!(task_tgid));
    if tid != tgid {
        // A thread's name is not the process's name.
        return Ok(());
    }
    bump(stat::RENAME_SEEN);
    let Some(mut rec) = EVENTS.reserve::<Event>(0) else {
        return Err(stat::RINGBUF_FULL);
    };
    let ev = unsafe { &mut *rec.as_mut_ptr() };
    ev.kind = kind::RENAME;
    ev.aux = 0;
    ev.ts = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = 0;
    ev.task.tgid = tgid;
    ev.task.tid = tid;
    ev.task.comm = [0; 16];
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(comm, &mut ev.task.comm) };
    ev.task.start_boottime = ld(task, off!(task_start_boottime));
    rec.submit(wake_flags());
    Ok(())
}

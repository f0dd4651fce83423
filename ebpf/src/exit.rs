use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use bpfproc_common::{Event, kind, stat};

use crate::{
    EVENTS, PROCS, bump, failed,
    kread::{Fail, cgroup_id, ld, task_info},
    off, wake_flags,
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    if let Err(counter) = try_exit(&ctx) {
        failed!(&ctx, ctx.arg::<*const u8>(0), counter);
    }
    0
}

fn try_exit(ctx: &BtfTracePointContext) -> Result<(), Fail> {
    let task: *const u8 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    // The tracepoint fires per thread; the process ends with its last thread.
    if group_dead & 0xff == 0 {
        return Ok(());
    }
    bump(stat::EXIT_SEEN);
    let Some(mut rec) = EVENTS.reserve::<Event>(0) else {
        // Still drop the map entry: the table must not keep a dead process.
        let tgid: u32 = ld(task, off!(task_tgid));
        let _ = PROCS.remove(&tgid);
        return Err(stat::RINGBUF_FULL);
    };
    let ev = unsafe { &mut *rec.as_mut_ptr() };
    let filled = fill(task, ev);
    let _ = PROCS.remove(&ev.task.tgid);
    match filled {
        Ok(()) => {
            rec.submit(wake_flags());
            Ok(())
        }
        Err(e) => {
            rec.discard(0);
            Err(e)
        }
    }
}

fn fill(task: *const u8, ev: &mut Event) -> Result<(), Fail> {
    ev.kind = kind::EXIT;
    ev.aux = 1;
    ev.ts = unsafe { bpf_ktime_get_boot_ns() };
    // The last thread to exit ends the process, and need not be its leader, which then waits
    // for the group as a zombie: the process is the leader's (its id, start time, name and
    // owner, as the fork record had them), and the leader's own CPU time is not in
    // signal_struct yet (it is folded in when the leader is reaped).
    let leader: *const u8 = ld(task, off!(task_group_leader));
    let (mut own_u, mut own_s): (u64, u64) =
        (ld(task, off!(task_utime)), ld(task, off!(task_stime)));
    // The cgroup too is the leader's, as /proc/PID/cgroup shows it (threads of a threaded
    // cgroup may sit elsewhere). The css_set stays pinned until the task is freed.
    if !leader.is_null() && leader != task {
        task_info(leader, &mut ev.task)?;
        ev.cgroup_id = cgroup_id(leader);
        own_u += ld::<u64>(leader, off!(task_utime));
        own_s += ld::<u64>(leader, off!(task_stime));
    } else {
        task_info(task, &mut ev.task)?;
        ev.cgroup_id = cgroup_id(task);
    }
    ev.task.exit_code = ld(task, off!(task_exit_code));
    let signal: *const u8 = ld(task, off!(task_signal));
    // Threads that already exited were folded into signal_struct; this one has not been yet.
    ev.task.utime = own_u + ld::<u64>(signal, off!(signal_utime));
    ev.task.stime = own_s + ld::<u64>(signal, off!(signal_stime));
    ev.task.cutime = ld(signal, off!(signal_cutime));
    ev.task.cstime = ld(signal, off!(signal_cstime));
    if let Some(entry) = PROCS.get_ptr(&ev.task.tgid) {
        ev.task.flags = unsafe { (*entry).task.flags };
    }
    Ok(())
}

/// The task struct is being freed: for a thread-group leader, the process has been reaped and
/// its pid can be reused, so the agent drops it from the live listing (zombies stay until then).
#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> i32 {
    if let Err(counter) = try_free(&ctx) {
        failed!(&ctx, ctx.arg::<*const u8>(0), counter);
    }
    0
}

fn try_free(ctx: &BtfTracePointContext) -> Result<(), Fail> {
    let task: *const u8 = ctx.arg(0);
    let tid: u32 = ld(task, off!(task_pid));
    let tgid: u32 = ld(task, off!(task_tgid));
    if tid != tgid {
        return Ok(());
    }
    bump(stat::FREE_SEEN);
    let Some(mut rec) = EVENTS.reserve::<Event>(0) else {
        return Err(stat::RINGBUF_FULL);
    };
    let ev = unsafe { &mut *rec.as_mut_ptr() };
    ev.kind = kind::FREE;
    ev.aux = 0;
    ev.ts = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = 0;
    ev.task.tgid = tgid;
    ev.task.tid = tid;
    ev.task.start_boottime = ld(task, off!(task_start_boottime));
    rec.submit(wake_flags());
    Ok(())
}

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user, bpf_send_signal},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use bpfproc_common::{ARGS_LEN, ExecEvent, ProcEntry, kind, pflag, stat};

use crate::{
    EVENTS, PROCS, SCRATCH, bump, failed,
    kread::{Fail, cgroup_id, ld, task_info},
    off, wake_flags,
};

const SIGSTOP: u32 = 19;

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if let Err(counter) = try_exec(&ctx) {
        failed!(&ctx, ctx.arg::<*const u8>(0), counter);
    }
    0
}

fn try_exec(ctx: &BtfTracePointContext) -> Result<(), Fail> {
    let task: *const u8 = ctx.arg(0);
    let old_pid: u32 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    bump(stat::EXEC_SEEN);
    let tgid: u32 = ld(task, off!(task_tgid));
    let entry = match PROCS.get_ptr_mut(&tgid) {
        Some(e) => e,
        None => {
            // Started before we were loaded and not yet backfilled: start its entry here.
            let fresh = SCRATCH.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
            unsafe { (*fresh).task.flags = 0 };
            if PROCS.insert(&tgid, unsafe { &*fresh }, 0).is_err() {
                bump(stat::MAP_FULL);
                fresh
            } else {
                PROCS.get_ptr_mut(&tgid).ok_or(stat::MAP_FULL)?
            }
        }
    };
    let entry: &mut ProcEntry = unsafe { &mut *entry };
    task_info(task, &mut entry.task)?;
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    entry.exec_ts = ts;
    entry.task.flags = (entry.task.flags & pflag::HANG) | pflag::EXECED;

    if !crate::exe::resolve(bprm, entry) {
        let filename: *const u8 = ld(bprm, off!(bprm_filename));
        entry.filename_len =
            match unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut entry.filename) } {
                Ok(name) => name.len() as u32,
                Err(_) => 0,
            };
    }

    // argv is already on the new stack: mm->arg_start..arg_end.
    let mm: *const u8 = ld(task, off!(task_mm));
    let start: u64 = ld(mm, off!(mm_arg_start));
    let end: u64 = ld(mm, off!(mm_arg_end));
    let mut len = end.saturating_sub(start);
    if len > ARGS_LEN as u64 {
        len = ARGS_LEN as u64;
        entry.task.flags |= pflag::ARGS_TRUNCATED;
    }
    let ret = unsafe {
        bpf_probe_read_user(
            entry.args.as_mut_ptr().cast(),
            (len as u32) & (ARGS_LEN as u32 * 2 - 1),
            start as *const _,
        )
    };
    entry.args_len = if ret == 0 {
        len as u32
    } else {
        bump(stat::ARGS_ERROR);
        0
    };

    if entry.task.flags & pflag::HANG != 0 {
        // Stop before the first user instruction of the new image; the process is stopped but
        // not traced, so any debugger can attach.
        unsafe { bpf_send_signal(SIGSTOP) };
        bump(stat::HANG_STOPS);
    }

    let Some(mut rec) = EVENTS.reserve::<ExecEvent>(0) else {
        return Err(stat::RINGBUF_FULL);
    };
    let ev = rec.as_mut_ptr();
    unsafe {
        (*ev).kind = kind::EXEC;
        (*ev).aux = old_pid;
        (*ev).ts = ts;
        (*ev).cgroup_id = cgroup_id(task);
        bpf_probe_read_kernel(
            (&raw mut (*ev).entry).cast(),
            size_of::<ProcEntry>() as u32,
            (entry as *const ProcEntry).cast(),
        );
    }
    rec.submit(wake_flags());
    Ok(())
}

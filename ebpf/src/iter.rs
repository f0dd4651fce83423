//! `iter/task`: one fixed-size `TaskRecord` per task, read by the agent for backfill and to
//! refresh the numbers no event carries (state, CPU time, memory).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_seq_write};
use bpfproc_common::{ProcEntry, TaskRecord, pflag, stat};

use crate::{
    ITER_SCRATCH, PROCS, SCRATCH, bump,
    kread::{Fail, ptr, rd, rd_into, task_info},
    off,
};

#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

#[repr(C)]
struct IterTask {
    meta: *mut IterMeta,
    task: *const u8,
}

const PF_EXITING: u32 = 0x4;
const PIDTYPE_PGID: u32 = 2;
const PIDTYPE_SID: u32 = 3;
const MM_FILEPAGES: u32 = 0;
const MM_ANONPAGES: u32 = 1;
const MM_SWAPENTS: u32 = 2;
const MM_SHMEMPAGES: u32 = 3;
const SIG_IGN: u64 = 1;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn dump_task(ctx: *mut c_void) -> i32 {
    let ctx = ctx as *const IterTask;
    let (meta, task) = unsafe { ((*ctx).meta, (*ctx).task) };
    if task.is_null() {
        return 0;
    }
    let Some(rec) = ITER_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let rec = unsafe { &mut *rec };
    match fill(task, rec) {
        Ok(()) => {
            let seq = unsafe { (*meta).seq };
            let ret = unsafe {
                bpf_seq_write(
                    seq.cast(),
                    (rec as *const TaskRecord).cast(),
                    size_of::<TaskRecord>() as u32,
                )
            };
            // -EOVERFLOW: the seq buffer is full and this task is shown again in the next
            // read(), so nothing is lost.
            if ret != 0 && ret != -75 {
                bump(stat::ITER_ERROR);
            } else if rec.tid == rec.tgid && rec.exit_state == 0 && rec.pf_flags & PF_EXITING == 0 {
                backfill(task, rec.tgid);
            }
        }
        Err(counter) => bump(counter),
    }
    0
}

/// Gives a process that predates the agent its entry in the process map.
fn backfill(task: *const u8, tgid: u32) {
    if PROCS.get_ptr(&tgid).is_some() {
        return;
    }
    let Some(entry) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let entry: &mut ProcEntry = unsafe { &mut *entry };
    if task_info(task, &mut entry.task).is_err() {
        bump(stat::READ_ERROR);
        return;
    }
    entry.task.flags = pflag::BACKFILLED;
    entry.task.exit_code = 0;
    entry.exec_ts = 0;
    entry.filename_len = 0;
    entry.args_len = 0;
    // NOEXIST: a fork or exec that raced us has better data.
    if PROCS.insert(&tgid, entry, 1).is_err() {
        bump(stat::MAP_FULL);
    }
}

fn fill(task: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    r.tid = rd(task, off!(task_pid))?;
    r.tgid = rd(task, off!(task_tgid))?;
    let parent = ptr(task, off!(task_real_parent))?;
    r.ppid = rd(parent, off!(task_tgid))?;
    let ptraced: u32 = rd(task, off!(task_ptrace))?;
    r.tracer_pid = if ptraced != 0 {
        let tracer = ptr(task, off!(task_parent))?;
        rd(tracer, off!(task_tgid))?
    } else {
        0
    };
    r.state = rd(task, off!(task_state))?;
    r.exit_state = rd(task, off!(task_exit_state))?;
    r.pf_flags = rd(task, off!(task_flags))?;
    let cred = ptr(task, off!(task_cred))?;
    r.uid = rd(cred, off!(cred_uid))?;
    r.euid = rd(cred, off!(cred_euid))?;
    r.suid = rd(cred, off!(cred_suid))?;
    r.fsuid = rd(cred, off!(cred_fsuid))?;
    r.gid = rd(cred, off!(cred_gid))?;
    r.egid = rd(cred, off!(cred_egid))?;
    r.sgid = rd(cred, off!(cred_sgid))?;
    r.fsgid = rd(cred, off!(cred_fsgid))?;
    r.prio = rd(task, off!(task_prio))?;
    r.static_prio = rd(task, off!(task_static_prio))?;
    r.rt_priority = rd(task, off!(task_rt_priority))?;
    r.policy = rd(task, off!(task_policy))?;
    r.cpu = rd(task, off!(task_cpu))?;
    r.exit_signal = rd(task, off!(task_exit_signal))?;
    r.start_boottime = rd(task, off!(task_start_boottime))?;
    r.start_time = rd(task, off!(task_start_time))?;
    r.utime = rd(task, off!(task_utime))?;
    r.stime = rd(task, off!(task_stime))?;
    r.gtime = rd(task, off!(task_gtime))?;
    r.min_flt = rd(task, off!(task_min_flt))?;
    r.maj_flt = rd(task, off!(task_maj_flt))?;
    r.nvcsw = rd(task, off!(task_nvcsw))?;
    r.nivcsw = rd(task, off!(task_nivcsw))?;
    r.sig_blocked = rd(task, off!(task_blocked))?;
    r.sig_pending = rd(task, off!(task_pending_signal))?;
    rd_into(&mut r.comm, task, off!(task_comm))?;
    r.exit_code = rd(task, off!(task_exit_code))?;
    r.sum_exec_runtime = rd(task, off!(task_sum_exec_runtime))?;
    r.prev_utime = rd(task, off!(task_prev_utime))?;
    r.prev_stime = rd(task, off!(task_prev_stime))?;
    r.cpus_allowed = rd(task, off!(task_cpus_mask))?;
    r.atomic_flags = rd::<u64>(task, off!(task_atomic_flags))? as u32;
    let seccomp = off!(task_seccomp_mode);
    r.seccomp = if seccomp == u32::MAX {
        0
    } else {
        rd(task, seccomp)?
    };
    r.cap_inheritable = rd(cred, off!(cred_cap_inheritable))?;
    r.cap_permitted = rd(cred, off!(cred_cap_permitted))?;
    r.cap_effective = rd(cred, off!(cred_cap_effective))?;
    r.cap_bset = rd(cred, off!(cred_cap_bset))?;
    r.cap_ambient = rd(cred, off!(cred_cap_ambient))?;
    r.ngroups = 0;
    let groups = ptr(cred, off!(cred_group_info))?;
    if !groups.is_null() {
        let n: i32 = rd(groups, off!(group_info_ngroups))?;
        r.ngroups = n.max(0) as u32;
        rd_into(&mut r.groups, groups, off!(group_info_gid))?;
    }
    r.umask = 0;
    let fs = ptr(task, off!(task_fs))?;
    if !fs.is_null() {
        r.umask = rd(fs, off!(fs_umask))?;
    }
    r.max_fds = 0;
    let files = ptr(task, off!(task_files))?;
    if !files.is_null() {
        let fdt = ptr(files, off!(files_fdt))?;
        if !fdt.is_null() {
            r.max_fds = rd(fdt, off!(fdtable_max_fds))?;
        }
    }

    r.cgroup_id = 0;
    let cgroups = ptr(task, off!(task_cgroups))?;
    if !cgroups.is_null() {
        let cgrp = ptr(cgroups, off!(css_set_dfl_cgrp))?;
        let kn = ptr(cgrp, off!(cgroup_kn))?;
        r.cgroup_id = rd(kn, off!(kernfs_node_id))?;
    }

    let signal = ptr(task, off!(task_signal))?;
    fill_signal(signal, r)?;
    if r.tid == r.tgid {
        fill_sighand(task, r)?;
    } else {
        r.sig_ignored = 0;
        r.sig_caught = 0;
    }
    fill_kthread_name(task, r)?;
    let mm = ptr(task, off!(task_mm))?;
    if mm.is_null() {
        r.has_mm = 0;
        clear_mm(r);
    } else {
        r.has_mm = 1;
        fill_mm(mm, r)?;
    }
    Ok(())
}

fn fill_signal(signal: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    r.nr_threads = rd(signal, off!(signal_nr_threads))?;
    r.sig_utime = rd(signal, off!(signal_utime))?;
    r.sig_stime = rd(signal, off!(signal_stime))?;
    r.cutime = rd(signal, off!(signal_cutime))?;
    r.cstime = rd(signal, off!(signal_cstime))?;
    r.sig_min_flt = rd(signal, off!(signal_min_flt))?;
    r.sig_maj_flt = rd(signal, off!(signal_maj_flt))?;
    r.cmin_flt = rd(signal, off!(signal_cmin_flt))?;
    r.cmaj_flt = rd(signal, off!(signal_cmaj_flt))?;
    r.sig_shared_pending = rd(signal, off!(signal_shared_pending))?;
    r.cgtime = rd(signal, off!(signal_cgtime))?;
    r.sig_sum_sched_runtime = rd(signal, off!(signal_sum_sched_runtime))?;
    r.sig_prev_utime = rd(signal, off!(signal_prev_utime))?;
    r.sig_prev_stime = rd(signal, off!(signal_prev_stime))?;
    rd_into(&mut r.rlim, signal, off!(signal_rlim))?;
    let pids = off!(signal_pids);
    r.pgid = pid_nr(ptr(signal, pids + PIDTYPE_PGID * 8)?)?;
    r.sid = pid_nr(ptr(signal, pids + PIDTYPE_SID * 8)?)?;
    r.tty_nr = 0;
    r.tpgid = -1;
    let tty = ptr(signal, off!(signal_tty))?;
    if !tty.is_null() {
        let index: i32 = rd(tty, off!(tty_index))?;
        let driver = ptr(tty, off!(tty_driver))?;
        let major: i32 = rd(driver, off!(tty_driver_major))?;
        let minor_start: i32 = rd(driver, off!(tty_driver_minor_start))?;
        let minor = (minor_start + index) as u32;
        // new_encode_dev(), as /proc/PID/stat prints it.
        r.tty_nr = (minor & 0xff) | ((major as u32) << 8) | ((minor & !0xff) << 12);
        let pgrp = ptr(tty, off!(tty_pgrp))?;
        if !pgrp.is_null() {
            r.tpgid = pid_nr(pgrp)? as i32;
        }
    }
    Ok(())
}

fn pid_nr(pid: *const u8) -> Result<u32, Fail> {
    if pid.is_null() {
        return Ok(0);
    }
    rd(pid, off!(pid_numbers_nr))
}

fn fill_sighand(task: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let sighand = ptr(task, off!(task_sighand))?;
    let mut ignored = 0u64;
    let mut caught = 0u64;
    if !sighand.is_null() {
        let action = off!(sighand_action);
        let stride = off!(k_sigaction_size);
        for i in 0..64u32 {
            // sa_handler is the first member of k_sigaction.sa.
            let handler: u64 = rd(sighand, action + i * stride)?;
            if handler == SIG_IGN {
                ignored |= 1 << i;
            } else if handler != 0 {
                caught |= 1 << i;
            }
        }
    }
    r.sig_ignored = ignored;
    r.sig_caught = caught;
    Ok(())
}

const PF_KTHREAD: u32 = 0x0020_0000;
const PF_WQ_WORKER: u32 = 0x20;

/// What /proc shows as a kernel thread's name: the untruncated name, or for a workqueue
/// worker its comm with the current work's description.
fn fill_kthread_name(task: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    r.full_name[0] = 0;
    r.wq_desc[0] = 0;
    r.wq_busy = 0;
    let private = off!(task_worker_private);
    if r.pf_flags & PF_KTHREAD == 0 || private == u32::MAX {
        return Ok(());
    }
    let kthread = ptr(task, private)?;
    if kthread.is_null() {
        return Ok(());
    }
    let full = off!(kthread_full_name);
    if full != u32::MAX {
        let name = ptr(kthread, full)?;
        if !name.is_null() {
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut r.full_name) };
        }
    }
    let (data, desc, current) = (
        off!(kthread_data),
        off!(worker_desc),
        off!(worker_current_work),
    );
    if r.pf_flags & PF_WQ_WORKER != 0 && data != u32::MAX && desc != u32::MAX && current != u32::MAX
    {
        let worker = ptr(kthread, data)?;
        if !worker.is_null() {
            rd_into(&mut r.wq_desc, worker, desc)?;
            r.wq_busy = u32::from(!ptr(worker, current)?.is_null());
        }
    }
    Ok(())
}

fn clear_mm(r: &mut TaskRecord) {
    r.total_vm = 0;
    r.locked_vm = 0;
    r.pinned_vm = 0;
    r.data_vm = 0;
    r.exec_vm = 0;
    r.stack_vm = 0;
    r.hiwater_rss = 0;
    r.hiwater_vm = 0;
    r.rss_file = 0;
    r.rss_anon = 0;
    r.rss_swapents = 0;
    r.rss_shmem = 0;
    r.pgtables_bytes = 0;
    r.start_code = 0;
    r.end_code = 0;
    r.start_data = 0;
    r.end_data = 0;
    r.start_brk = 0;
    r.brk = 0;
    r.start_stack = 0;
    r.arg_start = 0;
    r.arg_end = 0;
    r.env_start = 0;
    r.env_end = 0;
}

fn rss(mm: *const u8, counter: u32) -> Result<u64, Fail> {
    let at = off!(mm_rss_stat) + counter * off!(percpu_counter_size) + off!(percpu_counter_count);
    let v: i64 = rd(mm, at)?;
    // percpu_counter_read_positive(): per-CPU deltas can make the global count dip below 0.
    Ok(if v < 0 { 0 } else { v as u64 })
}

fn fill_mm(mm: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    r.total_vm = rd(mm, off!(mm_total_vm))?;
    r.locked_vm = rd(mm, off!(mm_locked_vm))?;
    r.pinned_vm = rd(mm, off!(mm_pinned_vm))?;
    r.data_vm = rd(mm, off!(mm_data_vm))?;
    r.exec_vm = rd(mm, off!(mm_exec_vm))?;
    r.stack_vm = rd(mm, off!(mm_stack_vm))?;
    r.hiwater_rss = rd(mm, off!(mm_hiwater_rss))?;
    r.hiwater_vm = rd(mm, off!(mm_hiwater_vm))?;
    r.rss_file = rss(mm, MM_FILEPAGES)?;
    r.rss_anon = rss(mm, MM_ANONPAGES)?;
    r.rss_swapents = rss(mm, MM_SWAPENTS)?;
    r.rss_shmem = rss(mm, MM_SHMEMPAGES)?;
    let pgtables = off!(mm_pgtables_bytes);
    r.pgtables_bytes = if pgtables == u32::MAX {
        0
    } else {
        rd(mm, pgtables)?
    };
    r.start_code = rd(mm, off!(mm_start_code))?;
    r.end_code = rd(mm, off!(mm_end_code))?;
    r.start_data = rd(mm, off!(mm_start_data))?;
    r.end_data = rd(mm, off!(mm_end_data))?;
    r.start_brk = rd(mm, off!(mm_start_brk))?;
    r.brk = rd(mm, off!(mm_brk))?;
    r.start_stack = rd(mm, off!(mm_start_stack))?;
    r.arg_start = rd(mm, off!(mm_arg_start))?;
    r.arg_end = rd(mm, off!(mm_arg_end))?;
    r.env_start = rd(mm, off!(mm_env_start))?;
    r.env_end = rd(mm, off!(mm_env_end))?;
    Ok(())
}

//! `iter/task`: one fixed-size `TaskRecord` per task, read by the agent for backfill and to
//! refresh the numbers no event carries (state, CPU time, memory).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_seq_write};
use bpfproc_common::{ProcEntry, TaskRecord, pflag, stat};

use crate::{
    ITER_CTL, ITER_SCRATCH, MAX_CPUS, NR_CPUS, PCPU_OFF, PROCS, RQ_TO_THIS_CPU_OFF, SCRATCH, bump,
    failed,
    kread::{Fail, cgroup_id, ld, ptr, rd, rd_into, task_info},
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
            } else if rec.tid == rec.tgid
                && rec.exit_state == 0
                && rec.pf_flags & PF_EXITING == 0
                && ITER_CTL.get(0).is_some_and(|on| *on != 0)
            {
                backfill(task, rec.tgid);
            }
        }
        Err(counter) => failed!(ctx, task, counter),
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
        return;
    }
    // The process may have begun to exit since its flags were read, and its exit hook may
    // already have removed the entry we just made: PF_EXITING is set before that hook runs,
    // so seeing it clear now means the hook is still to come and will remove the entry.
    if ld::<u32>(task, off!(task_flags)) & PF_EXITING != 0 {
        let _ = PROCS.remove(&tgid);
    }
}

fn fill(task: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let t = task;
    r.tid = ld(t, off!(task_pid));
    r.tgid = ld(t, off!(task_tgid));
    r.ppid = ld(ld::<*const u8>(t, off!(task_real_parent)), off!(task_tgid));
    let ptraced: u32 = ld(t, off!(task_ptrace));
    r.tracer_pid = if ptraced != 0 {
        ld(ld::<*const u8>(t, off!(task_parent)), off!(task_tgid))
    } else {
        0
    };
    r.state = ld(t, off!(task_state));
    r.exit_state = ld(t, off!(task_exit_state));
    r.pf_flags = ld(t, off!(task_flags));
    r.prio = ld(t, off!(task_prio));
    r.static_prio = ld(t, off!(task_static_prio));
    r.rt_priority = ld(t, off!(task_rt_priority));
    r.policy = ld(t, off!(task_policy));
    r.cpu = ld(t, off!(task_cpu));
    r.exit_signal = ld(t, off!(task_exit_signal));
    r.start_boottime = ld(t, off!(task_start_boottime));
    r.start_time = ld(t, off!(task_start_time));
    r.utime = ld(t, off!(task_utime));
    r.stime = ld(t, off!(task_stime));
    r.gtime = ld(t, off!(task_gtime));
    r.min_flt = ld(t, off!(task_min_flt));
    r.maj_flt = ld(t, off!(task_maj_flt));
    r.nvcsw = ld(t, off!(task_nvcsw));
    r.nivcsw = ld(t, off!(task_nivcsw));
    r.sig_blocked = ld(t, off!(task_blocked));
    r.sig_pending = ld(t, off!(task_pending_signal));
    r.comm = ld(t, off!(task_comm));
    r.exit_code = ld(t, off!(task_exit_code));
    r.sum_exec_runtime = ld(t, off!(task_sum_exec_runtime));
    r.prev_utime = ld(t, off!(task_prev_utime));
    r.prev_stime = ld(t, off!(task_prev_stime));
    r.cpus_allowed = ld(t, off!(task_cpus_mask));
    r.atomic_flags = ld::<u64>(t, off!(task_atomic_flags)) as u32;
    let seccomp = off!(task_seccomp_mode);
    r.seccomp = if seccomp == u32::MAX {
        0
    } else {
        ld(t, seccomp)
    };
    let cred = ld::<*const u8>(t, off!(task_cred));
    let signal = ld::<*const u8>(t, off!(task_signal));
    let sighand = ld::<*const u8>(t, off!(task_sighand));
    let mm = ld::<*const u8>(t, off!(task_mm));
    let fs = ld::<*const u8>(t, off!(task_fs));
    let files = ld::<*const u8>(t, off!(task_files));
    let private = off!(task_worker_private);
    let kthread = if private == u32::MAX {
        core::ptr::null()
    } else {
        ld::<*const u8>(t, private)
    };

    if PCPU_OFF.get(r.cpu).is_none_or(|v| *v == 0) {
        learn_cpu_offset(ld::<*const u8>(t, off!(task_se_cfs_rq)));
    }
    fill_cred(cred, r)?;
    if r.tid != r.tgid {
        // Everything below is shared by the thread group; the agent copies it from the
        // leader's record instead of reading it once per thread.
        return Ok(());
    }
    r.cgroup_id = cgroup_id(t);
    r.umask = if fs.is_null() {
        0
    } else {
        ld(fs, off!(fs_umask))
    };
    r.max_fds = 0;
    if !files.is_null() {
        let fdt: *const u8 = ld(files, off!(files_fdt));
        if !fdt.is_null() {
            r.max_fds = ld(fdt, off!(fdtable_max_fds));
        }
    }
    fill_signal(signal, r)?;
    if r.tid == r.tgid {
        fill_sighand(sighand, r)?;
    } else {
        r.sig_ignored = 0;
        r.sig_caught = 0;
    }
    fill_kthread_name(kthread, r)?;
    if mm.is_null() {
        r.has_mm = 0;
        clear_mm(r);
    } else {
        r.has_mm = 1;
        fill_mm(mm, r)?;
        let exe: *const u8 = ld(mm, off!(mm_exe_file));
        let dentry: *const u8 = if exe.is_null() {
            core::ptr::null()
        } else {
            ld(exe, off!(file_path_dentry))
        };
        r.exe_deleted = u32::from(
            !dentry.is_null() && ld::<*const u8>(dentry, off!(dentry_hash_pprev)).is_null(),
        );
    }
    Ok(())
}

fn fill_cred(cred: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let c = cred;
    r.uid = ld(c, off!(cred_uid));
    r.euid = ld(c, off!(cred_euid));
    r.suid = ld(c, off!(cred_suid));
    r.fsuid = ld(c, off!(cred_fsuid));
    r.gid = ld(c, off!(cred_gid));
    r.egid = ld(c, off!(cred_egid));
    r.sgid = ld(c, off!(cred_sgid));
    r.fsgid = ld(c, off!(cred_fsgid));
    r.cap_inheritable = ld(c, off!(cred_cap_inheritable));
    r.cap_permitted = ld(c, off!(cred_cap_permitted));
    r.cap_effective = ld(c, off!(cred_cap_effective));
    r.cap_bset = ld(c, off!(cred_cap_bset));
    r.cap_ambient = ld(c, off!(cred_cap_ambient));
    r.ngroups = 0;
    let groups = ld::<*const u8>(c, off!(cred_group_info));
    if !groups.is_null() {
        let n: i32 = ld(groups, off!(group_info_ngroups));
        r.ngroups = n.max(0) as u32;
        // `gid[]` is a flexible array, beyond what the verifier lets a direct load reach.
        if n > 0 {
            rd_into(&mut r.groups, groups, off!(group_info_gid))?;
        }
    }
    Ok(())
}

fn fill_signal(signal: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let s = signal;
    r.nr_threads = ld(s, off!(signal_nr_threads));
    r.sig_utime = ld(s, off!(signal_utime));
    r.sig_stime = ld(s, off!(signal_stime));
    r.cutime = ld(s, off!(signal_cutime));
    r.cstime = ld(s, off!(signal_cstime));
    r.sig_min_flt = ld(s, off!(signal_min_flt));
    r.sig_maj_flt = ld(s, off!(signal_maj_flt));
    r.cmin_flt = ld(s, off!(signal_cmin_flt));
    r.cmaj_flt = ld(s, off!(signal_cmaj_flt));
    r.sig_shared_pending = ld(s, off!(signal_shared_pending));
    r.cgtime = ld(s, off!(signal_cgtime));
    r.sig_sum_sched_runtime = ld(s, off!(signal_sum_sched_runtime));
    r.sig_prev_utime = ld(s, off!(signal_prev_utime));
    r.sig_prev_stime = ld(s, off!(signal_prev_stime));
    rd_into(&mut r.rlim, s, off!(signal_rlim))?;
    let pids = off!(signal_pids);
    r.pgid = pid_nr(ld::<*const u8>(s, pids + PIDTYPE_PGID * 8))?;
    r.sid = pid_nr(ld::<*const u8>(s, pids + PIDTYPE_SID * 8))?;
    r.tty_nr = 0;
    r.tpgid = -1;
    let tty = ld::<*const u8>(s, off!(signal_tty));
    if !tty.is_null() {
        let index: i32 = ld(tty, off!(tty_index));
        let driver: *const u8 = ld(tty, off!(tty_driver));
        let major: i32 = ld(driver, off!(tty_driver_major));
        let minor_start: i32 = ld(driver, off!(tty_driver_minor_start));
        let minor = (minor_start + index) as u32;
        // new_encode_dev(), as /proc/PID/stat prints it.
        r.tty_nr = (minor & 0xff) | ((major as u32) << 8) | ((minor & !0xff) << 12);
        let pgrp: *const u8 = ld(tty, off!(tty_pgrp));
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
    Ok(ld(pid, off!(pid_numbers_nr)))
}

fn fill_sighand(sighand: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let mut ignored = 0u64;
    let mut caught = 0u64;
    if !sighand.is_null() {
        let (action, stride) = (off!(sighand_action), off!(k_sigaction_size));
        for i in 0..64u32 {
            // sa_handler is the first member of k_sigaction.sa.
            let handler: u64 = ld(sighand, action + i * stride);
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
fn fill_kthread_name(kthread: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    r.full_name[0] = 0;
    r.wq_desc[0] = 0;
    r.wq_busy = 0;
    if r.pf_flags & PF_KTHREAD == 0 || kthread.is_null() {
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
    r.exe_deleted = 0;
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
    r.rss_sum = [0; 4];
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

/// The kernel's per-CPU offset of the CPU whose runqueue `cfs_rq` belongs to, remembered in
/// `PCPU_OFF`. The per-CPU copy of `this_cpu_off` holds exactly that offset, and it sits at a
/// fixed distance (from BTF) from the CPU's runqueue.
fn learn_cpu_offset(cfs_rq: *const u8) {
    let distance = unsafe { core::ptr::read_volatile(&RQ_TO_THIS_CPU_OFF) };
    let (rq_off, cpu_off) = (off!(cfs_rq_rq), off!(rq_cpu));
    if cfs_rq.is_null() || distance == 0 || rq_off == u32::MAX || cpu_off == u32::MAX {
        return;
    }
    let rq: *const u8 = ld(cfs_rq, rq_off);
    let cpu: u32 = ld(rq, cpu_off);
    if cpu >= MAX_CPUS || PCPU_OFF.get(cpu).is_some_and(|v| *v != 0) {
        return;
    }
    if let Ok(offset) = rd::<u64>(rq.wrapping_offset(distance as isize), 0) {
        let _ = PCPU_OFF.set(cpu, &offset, 0);
    }
}

/// `percpu_counter_sum_positive()`, as /proc reports rss: the central count plus every CPU's
/// not-yet-folded delta (the central count alone can be off by a batch per CPU).
#[inline(always)]
fn rss(m: *const u8, counter: u32) -> (u64, u64) {
    let base = off!(mm_rss_stat) + counter * off!(percpu_counter_size);
    let central: i64 = ld(m, base + off!(percpu_counter_count));
    let mut v = central;
    // A `__percpu` pointer: read as a plain number (the verifier forbids arithmetic on the
    // typed pointer a direct load would give).
    let counters: u64 = ld(m, base + off!(percpu_counter_counters));
    let ncpu = unsafe { core::ptr::read_volatile(&NR_CPUS) }.min(MAX_CPUS);
    if counters != 0 {
        for cpu in 0..ncpu {
            let Some(off) = PCPU_OFF.get(cpu) else { break };
            if *off == 0 {
                continue;
            }
            if let Ok(delta) = rd::<i32>(counters.wrapping_add(*off) as *const u8, 0) {
                v += i64::from(delta);
            }
        }
    }
    (central.max(0) as u64, v.max(0) as u64)
}

fn fill_mm(mm: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let m = mm;
    r.total_vm = ld(m, off!(mm_total_vm));
    r.locked_vm = ld(m, off!(mm_locked_vm));
    r.pinned_vm = ld(m, off!(mm_pinned_vm));
    r.data_vm = ld(m, off!(mm_data_vm));
    r.exec_vm = ld(m, off!(mm_exec_vm));
    r.stack_vm = ld(m, off!(mm_stack_vm));
    r.hiwater_rss = ld(m, off!(mm_hiwater_rss));
    r.hiwater_vm = ld(m, off!(mm_hiwater_vm));
    (r.rss_file, r.rss_sum[0]) = rss(m, MM_FILEPAGES);
    (r.rss_anon, r.rss_sum[1]) = rss(m, MM_ANONPAGES);
    (r.rss_swapents, r.rss_sum[2]) = rss(m, MM_SWAPENTS);
    (r.rss_shmem, r.rss_sum[3]) = rss(m, MM_SHMEMPAGES);
    let pgtables = off!(mm_pgtables_bytes);
    r.pgtables_bytes = if pgtables == u32::MAX {
        0
    } else {
        ld(m, pgtables)
    };
    r.start_code = ld(m, off!(mm_start_code));
    r.end_code = ld(m, off!(mm_end_code));
    r.start_data = ld(m, off!(mm_start_data));
    r.end_data = ld(m, off!(mm_end_data));
    r.start_brk = ld(m, off!(mm_start_brk));
    r.brk = ld(m, off!(mm_brk));
    r.start_stack = ld(m, off!(mm_start_stack));
    r.arg_start = ld(m, off!(mm_arg_start));
    r.arg_end = ld(m, off!(mm_arg_end));
    r.env_start = ld(m, off!(mm_env_start));
    r.env_end = ld(m, off!(mm_env_end));
    Ok(())
}

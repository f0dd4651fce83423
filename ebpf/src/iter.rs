//! `iter/task`: one fixed-size `TaskRecord` per task, read by the agent for backfill and to
//! refresh the numbers no event carries (state, CPU time, memory).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_seq_write};
use bpfproc_common::{ProcEntry, TaskRecord, pflag, stat};

use crate::{
    ITER_SCRATCH, MAX_CPUS, NR_CPUS, PCPU_OFF, PROCS, RQ_TO_THIS_CPU_OFF, SCRATCH, bump,
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

/// Power-of-two capacities of the per-CPU copies of each structure; the agent refuses to load
/// on a kernel whose structures are larger. A field is then one masked load from the copy
/// instead of a helper call: ~25 reads per task instead of ~170.
const TASK_CAP: usize = 16384;
const SIGNAL_CAP: usize = 4096;
const MM_CAP: usize = 4096;
const CRED_CAP: usize = 1024;
const ACT_CAP: usize = 4096;
/// Room past the mask for the widest field read (the 16-byte comm is copied, not loaded).
const SLACK: usize = 16;

#[repr(C)]
pub struct IterBufs {
    task: [u8; TASK_CAP + SLACK],
    signal: [u8; SIGNAL_CAP + SLACK],
    mm: [u8; MM_CAP + SLACK],
    cred: [u8; CRED_CAP + SLACK],
    act: [u8; ACT_CAP + SLACK],
}

#[aya_ebpf::macros::map]
static ITER_BUFS: aya_ebpf::maps::PerCpuArray<IterBufs> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

/// A field of a copied structure. The mask keeps the verifier's bounds; the agent checked at
/// load that every offset lies inside the copy.
#[inline(always)]
fn at<T: Copy, const N: usize>(buf: &[u8; N], off: u32) -> T {
    let i = (off as usize) & (N - SLACK - 1);
    unsafe { core::ptr::read_unaligned(buf.as_ptr().add(i) as *const T) }
}

#[inline(always)]
fn ptr_at<const N: usize>(buf: &[u8; N], off: u32) -> *const u8 {
    at::<u64, N>(buf, off) as *const u8
}

/// Copies `size` bytes of the structure at `src` into `buf`.
#[inline(always)]
fn copy<const N: usize>(buf: &mut [u8; N], src: *const u8, size: u32) -> Result<(), Fail> {
    let n = size & (N - SLACK - 1) as u32;
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(buf.as_mut_ptr().cast(), n, src.cast())
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(stat::READ_ERROR)
    }
}

fn fill(task: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let b = ITER_BUFS.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
    let b = unsafe { &mut *b };
    copy(&mut b.task, task, off!(task_size))?;
    let t = &b.task;
    r.tid = at(t, off!(task_pid));
    r.tgid = at(t, off!(task_tgid));
    r.ppid = rd(ptr_at(t, off!(task_real_parent)), off!(task_tgid))?;
    let ptraced: u32 = at(t, off!(task_ptrace));
    r.tracer_pid = if ptraced != 0 {
        rd(ptr_at(t, off!(task_parent)), off!(task_tgid))?
    } else {
        0
    };
    r.state = at(t, off!(task_state));
    r.exit_state = at(t, off!(task_exit_state));
    r.pf_flags = at(t, off!(task_flags));
    r.prio = at(t, off!(task_prio));
    r.static_prio = at(t, off!(task_static_prio));
    r.rt_priority = at(t, off!(task_rt_priority));
    r.policy = at(t, off!(task_policy));
    r.cpu = at(t, off!(task_cpu));
    r.exit_signal = at(t, off!(task_exit_signal));
    r.start_boottime = at(t, off!(task_start_boottime));
    r.start_time = at(t, off!(task_start_time));
    r.utime = at(t, off!(task_utime));
    r.stime = at(t, off!(task_stime));
    r.gtime = at(t, off!(task_gtime));
    r.min_flt = at(t, off!(task_min_flt));
    r.maj_flt = at(t, off!(task_maj_flt));
    r.nvcsw = at(t, off!(task_nvcsw));
    r.nivcsw = at(t, off!(task_nivcsw));
    r.sig_blocked = at(t, off!(task_blocked));
    r.sig_pending = at(t, off!(task_pending_signal));
    r.comm = at(t, off!(task_comm));
    r.exit_code = at(t, off!(task_exit_code));
    r.sum_exec_runtime = at(t, off!(task_sum_exec_runtime));
    r.prev_utime = at(t, off!(task_prev_utime));
    r.prev_stime = at(t, off!(task_prev_stime));
    r.cpus_allowed = at(t, off!(task_cpus_mask));
    r.atomic_flags = at::<u64, _>(t, off!(task_atomic_flags)) as u32;
    let seccomp = off!(task_seccomp_mode);
    r.seccomp = if seccomp == u32::MAX {
        0
    } else {
        at(t, seccomp)
    };
    let cred = ptr_at(t, off!(task_cred));
    let signal = ptr_at(t, off!(task_signal));
    let sighand = ptr_at(t, off!(task_sighand));
    let mm = ptr_at(t, off!(task_mm));
    let cgroups = ptr_at(t, off!(task_cgroups));
    let fs = ptr_at(t, off!(task_fs));
    let files = ptr_at(t, off!(task_files));
    let private = off!(task_worker_private);
    let kthread = if private == u32::MAX {
        core::ptr::null()
    } else {
        ptr_at(t, private)
    };

    learn_cpu_offset(ptr_at(t, off!(task_se_cfs_rq)));
    fill_cred(b, cred, r)?;
    if r.tid != r.tgid {
        // Everything below is shared by the thread group; the agent copies it from the
        // leader's record instead of reading it once per thread.
        return Ok(());
    }
    r.cgroup_id = 0;
    if !cgroups.is_null() {
        let cgrp = ptr(cgroups, off!(css_set_dfl_cgrp))?;
        let kn = ptr(cgrp, off!(cgroup_kn))?;
        r.cgroup_id = rd(kn, off!(kernfs_node_id))?;
    }
    r.umask = if fs.is_null() {
        0
    } else {
        rd(fs, off!(fs_umask))?
    };
    r.max_fds = 0;
    if !files.is_null() {
        let fdt = ptr(files, off!(files_fdt))?;
        if !fdt.is_null() {
            r.max_fds = rd(fdt, off!(fdtable_max_fds))?;
        }
    }
    fill_signal(b, signal, r)?;
    if r.tid == r.tgid {
        fill_sighand(b, sighand, r)?;
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
        fill_mm(b, mm, r)?;
    }
    Ok(())
}

fn fill_cred(b: &mut IterBufs, cred: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    copy(&mut b.cred, cred, off!(cred_size))?;
    let c = &b.cred;
    r.uid = at(c, off!(cred_uid));
    r.euid = at(c, off!(cred_euid));
    r.suid = at(c, off!(cred_suid));
    r.fsuid = at(c, off!(cred_fsuid));
    r.gid = at(c, off!(cred_gid));
    r.egid = at(c, off!(cred_egid));
    r.sgid = at(c, off!(cred_sgid));
    r.fsgid = at(c, off!(cred_fsgid));
    r.cap_inheritable = at(c, off!(cred_cap_inheritable));
    r.cap_permitted = at(c, off!(cred_cap_permitted));
    r.cap_effective = at(c, off!(cred_cap_effective));
    r.cap_bset = at(c, off!(cred_cap_bset));
    r.cap_ambient = at(c, off!(cred_cap_ambient));
    r.ngroups = 0;
    let groups = ptr_at(c, off!(cred_group_info));
    if !groups.is_null() {
        let n: i32 = rd(groups, off!(group_info_ngroups))?;
        r.ngroups = n.max(0) as u32;
        rd_into(&mut r.groups, groups, off!(group_info_gid))?;
    }
    Ok(())
}

fn fill_signal(b: &mut IterBufs, signal: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    copy(&mut b.signal, signal, off!(signal_size))?;
    let s = &b.signal;
    r.nr_threads = at(s, off!(signal_nr_threads));
    r.sig_utime = at(s, off!(signal_utime));
    r.sig_stime = at(s, off!(signal_stime));
    r.cutime = at(s, off!(signal_cutime));
    r.cstime = at(s, off!(signal_cstime));
    r.sig_min_flt = at(s, off!(signal_min_flt));
    r.sig_maj_flt = at(s, off!(signal_maj_flt));
    r.cmin_flt = at(s, off!(signal_cmin_flt));
    r.cmaj_flt = at(s, off!(signal_cmaj_flt));
    r.sig_shared_pending = at(s, off!(signal_shared_pending));
    r.cgtime = at(s, off!(signal_cgtime));
    r.sig_sum_sched_runtime = at(s, off!(signal_sum_sched_runtime));
    r.sig_prev_utime = at(s, off!(signal_prev_utime));
    r.sig_prev_stime = at(s, off!(signal_prev_stime));
    let base = s.as_ptr();
    rd_into(
        &mut r.rlim,
        base,
        off!(signal_rlim) & (SIGNAL_CAP as u32 - 1),
    )?;
    let pids = off!(signal_pids);
    r.pgid = pid_nr(ptr_at(s, pids + PIDTYPE_PGID * 8))?;
    r.sid = pid_nr(ptr_at(s, pids + PIDTYPE_SID * 8))?;
    r.tty_nr = 0;
    r.tpgid = -1;
    let tty = ptr_at(s, off!(signal_tty));
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

fn fill_sighand(b: &mut IterBufs, sighand: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    let mut ignored = 0u64;
    let mut caught = 0u64;
    if !sighand.is_null() {
        let stride = off!(k_sigaction_size);
        copy(
            &mut b.act,
            sighand.wrapping_add(off!(sighand_action) as usize),
            stride * 64,
        )?;
        for i in 0..64u32 {
            // sa_handler is the first member of k_sigaction.sa.
            let handler: u64 = at(&b.act, i * stride);
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
    let Ok(rq) = ptr(cfs_rq, rq_off) else { return };
    let Ok(cpu) = rd::<u32>(rq, cpu_off) else {
        return;
    };
    if cpu >= MAX_CPUS || PCPU_OFF.get(cpu).is_some_and(|v| *v != 0) {
        return;
    }
    if let Ok(offset) = rd::<u64>(rq.wrapping_offset(distance as isize), 0) {
        let _ = PCPU_OFF.set(cpu, &offset, 0);
    }
}

/// `percpu_counter_sum_positive()`, as /proc reports rss: the central count plus every CPU's
/// not-yet-folded delta (the central count alone can be off by a batch per CPU).
fn rss(m: &[u8; MM_CAP + SLACK], counter: u32) -> (u64, u64) {
    let base = off!(mm_rss_stat) + counter * off!(percpu_counter_size);
    let central: i64 = at(m, base + off!(percpu_counter_count));
    let mut v = central;
    let counters = at::<u64, _>(m, base + off!(percpu_counter_counters));
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

fn fill_mm(b: &mut IterBufs, mm: *const u8, r: &mut TaskRecord) -> Result<(), Fail> {
    copy(&mut b.mm, mm, off!(mm_size))?;
    let m = &b.mm;
    r.total_vm = at(m, off!(mm_total_vm));
    r.locked_vm = at(m, off!(mm_locked_vm));
    r.pinned_vm = at(m, off!(mm_pinned_vm));
    r.data_vm = at(m, off!(mm_data_vm));
    r.exec_vm = at(m, off!(mm_exec_vm));
    r.stack_vm = at(m, off!(mm_stack_vm));
    r.hiwater_rss = at(m, off!(mm_hiwater_rss));
    r.hiwater_vm = at(m, off!(mm_hiwater_vm));
    (r.rss_file, r.rss_sum[0]) = rss(m, MM_FILEPAGES);
    (r.rss_anon, r.rss_sum[1]) = rss(m, MM_ANONPAGES);
    (r.rss_swapents, r.rss_sum[2]) = rss(m, MM_SWAPENTS);
    (r.rss_shmem, r.rss_sum[3]) = rss(m, MM_SHMEMPAGES);
    let pgtables = off!(mm_pgtables_bytes);
    r.pgtables_bytes = if pgtables == u32::MAX {
        0
    } else {
        at(m, pgtables)
    };
    r.start_code = at(m, off!(mm_start_code));
    r.end_code = at(m, off!(mm_end_code));
    r.start_data = at(m, off!(mm_start_data));
    r.end_data = at(m, off!(mm_end_data));
    r.start_brk = at(m, off!(mm_start_brk));
    r.brk = at(m, off!(mm_brk));
    r.start_stack = at(m, off!(mm_start_stack));
    r.arg_start = at(m, off!(mm_arg_start));
    r.arg_end = at(m, off!(mm_arg_end));
    r.env_start = at(m, off!(mm_env_start));
    r.env_end = at(m, off!(mm_env_end));
    Ok(())
}

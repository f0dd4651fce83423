//! Reads of kernel structures at offsets taken from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use bpfproc_common::{TaskInfo, stat};

use crate::off;

/// A failed read, already mapped to the stats counter it should bump.
pub(crate) type Fail = u32;

/// A field of a structure the verifier knows the BTF type of (a tracing argument, the
/// iterator's task, or a pointer loaded from either): a plain load, which the JIT makes a
/// fault-safe native load. Roughly a nanosecond, against ~50 ns for a helper call; it was
/// what took one iterator pass from 16 ms to a few at 3,000 processes. The offset must be
/// known to the verifier (it is: `OFFSETS` lives in frozen read-only data).
#[inline(always)]
pub(crate) fn ld<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

#[inline(always)]
pub(crate) fn rd<T: Copy>(base: *const u8, offset: u32) -> Result<T, Fail> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .map_err(|_| stat::READ_ERROR)
}

/// Reads straight into `dst` (map memory), for values too large to pass through the stack.
#[inline(always)]
pub(crate) fn rd_into<T>(dst: &mut T, base: *const u8, offset: u32) -> Result<(), Fail> {
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            (dst as *mut T).cast(),
            size_of::<T>() as u32,
            base.wrapping_add(offset as usize).cast(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(stat::READ_ERROR)
    }
}

#[inline(always)]
pub(crate) fn ptr(base: *const u8, offset: u32) -> Result<*const u8, Fail> {
    rd::<*const u8>(base, offset)
}

/// The id of `task`'s cgroup v2 (`task->cgroups->dfl_cgrp->kn->id`, what
/// `bpf_get_current_cgroup_id` returns for the current task), 0 without a css_set.
#[inline(always)]
pub(crate) fn cgroup_id(task: *const u8) -> u64 {
    let cgroups: *const u8 = ld(task, off!(task_cgroups));
    if cgroups.is_null() {
        return 0;
    }
    let cgrp: *const u8 = ld(cgroups, off!(css_set_dfl_cgrp));
    let kn: *const u8 = ld(cgrp, off!(cgroup_kn));
    ld(kn, off!(kernfs_node_id))
}

/// Fills the identity fields of `info` from `task`.
#[inline(always)]
pub(crate) fn task_info(task: *const u8, info: &mut TaskInfo) -> Result<(), Fail> {
    info.tid = ld(task, off!(task_pid));
    info.tgid = ld(task, off!(task_tgid));
    // The parent a user sees is real_parent's thread group, not `parent` (a tracer) and not the
    // forking thread.
    let parent: *const u8 = ld(task, off!(task_real_parent));
    info.ppid = ld(parent, off!(task_tgid));
    let cred: *const u8 = ld(task, off!(task_real_cred));
    info.uid = ld(cred, off!(cred_uid));
    info.gid = ld(cred, off!(cred_gid));
    let cred: *const u8 = ld(task, off!(task_cred));
    info.euid = ld(cred, off!(cred_euid));
    info.egid = ld(cred, off!(cred_egid));
    info.pf_flags = ld(task, off!(task_flags));
    let signal: *const u8 = ld(task, off!(task_signal));
    info.nr_threads = ld(signal, off!(signal_nr_threads));
    info.start_boottime = ld(task, off!(task_start_boottime));
    info.comm = ld(task, off!(task_comm));
    Ok(())
}

//! Reads of kernel structures at offsets taken from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use bpfproc_common::{TaskInfo, stat};

use crate::off;

/// A failed read, already mapped to the stats counter it should bump.
pub(crate) type Fail = u32;

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

/// Fills the identity fields of `info` from `task`.
#[inline(always)]
pub(crate) fn task_info(task: *const u8, info: &mut TaskInfo) -> Result<(), Fail> {
    info.tid = rd(task, off!(task_pid))?;
    info.tgid = rd(task, off!(task_tgid))?;
    // The parent a user sees is real_parent's thread group, not `parent` (a tracer) and not the
    // forking thread.
    let parent = ptr(task, off!(task_real_parent))?;
    info.ppid = rd(parent, off!(task_tgid))?;
    let cred = ptr(task, off!(task_real_cred))?;
    info.uid = rd(cred, off!(cred_uid))?;
    info.gid = rd(cred, off!(cred_gid))?;
    let cred = ptr(task, off!(task_cred))?;
    info.euid = rd(cred, off!(cred_euid))?;
    info.egid = rd(cred, off!(cred_egid))?;
    info.pf_flags = rd(task, off!(task_flags))?;
    let signal = ptr(task, off!(task_signal))?;
    info.nr_threads = rd(signal, off!(signal_nr_threads))?;
    info.start_boottime = rd(task, off!(task_start_boottime))?;
    rd_into(&mut info.comm, task, off!(task_comm))?;
    Ok(())
}

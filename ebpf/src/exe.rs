//! The executable's path as the kernel resolves it (what `/proc/PID/exe` shows), walked from
//! `bprm->file` at exec. `bpf_d_path` is not allowed in a tracepoint, and `bprm->filename` is
//! the path as exec was given it (`./prog`, `/bin/sleep` through a symlink), useless to anyone
//! reading it later from another directory.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_str},
};
use bpfproc_common::{FILENAME_LEN, ProcEntry, pflag};

use crate::{PATH_SCRATCH, kread::ptr, off};

/// Directory levels walked; a deeper path falls back to `bprm->filename`.
const MAX_DEPTH: usize = 40;
/// A component's longest name (NAME_MAX) and its NUL.
const NAME_BUF: usize = 256;

/// Writes the executable's path, leaf first with each component NUL-terminated, into
/// `entry.filename` and sets `EXE_RESOLVED` (and `EXE_DELETED`). False when the kernel lacks
/// a field, the path does not fit or a read fails: the caller keeps `bprm->filename`.
#[inline(always)]
pub(crate) fn resolve(bprm: *const u8, entry: &mut ProcEntry) -> bool {
    walk(bprm, entry).is_some()
}

/// The walk's state, on the program's stack, handed to each `bpf_loop` step.
#[repr(C)]
struct Walk {
    mnt: *const u8,
    mount: *const u8,
    dentry: *const u8,
    len: u64,
    /// 0: walking; 1: reached the root; 2: failed.
    end: u64,
}

fn walk(bprm: *const u8, entry: &mut ProcEntry) -> Option<()> {
    let offs = [
        off!(bprm_file),
        off!(file_path_mnt),
        off!(file_path_dentry),
        off!(vfsmount_root),
        off!(mount_mnt),
        off!(mount_parent),
        off!(mount_mountpoint),
        off!(dentry_parent),
        off!(dentry_name),
        off!(dentry_hash_pprev),
    ];
    if offs.contains(&u32::MAX) {
        return None;
    }
    let file = ptr(bprm, off!(bprm_file)).ok()?;
    let mnt = ptr(file, off!(file_path_mnt)).ok()?;
    let leaf = ptr(file, off!(file_path_dentry)).ok()?;
    let mut w = Walk {
        mnt,
        mount: mnt.wrapping_sub(off!(mount_mnt) as usize),
        dentry: leaf,
        len: 0,
        end: 0,
    };
    // bpf_loop: the verifier checks one step once, where an unrolled walk of this depth
    // exceeded its million-instruction budget.
    unsafe {
        bpf_loop(
            MAX_DEPTH as u32,
            step as *mut c_void,
            (&raw mut w).cast(),
            0,
        )
    };
    let len = w.len as usize;
    if w.end != 1 || len > FILENAME_LEN {
        return None;
    }
    let buf = PATH_SCRATCH.get_ptr(0)?;
    // An unhashed dentry that is not a root has been unlinked (d_unlinked).
    let pprev = ptr(leaf, off!(dentry_hash_pprev)).ok()?;
    let copied = unsafe {
        bpf_probe_read_kernel(
            entry.filename.as_mut_ptr().cast(),
            FILENAME_LEN as u32,
            buf.cast(),
        )
    };
    if copied != 0 {
        return None;
    }
    entry.filename_len = len as u32;
    entry.task.flags |= pflag::EXE_RESOLVED;
    if pprev.is_null() && len > 0 {
        entry.task.flags |= pflag::EXE_DELETED;
    }
    Some(())
}

/// One level up: a component copied, or a mount crossed. Returns 1 to stop.
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    match climb(w) {
        Some(false) => 0,
        Some(true) => {
            w.end = 1;
            1
        }
        None => {
            w.end = 2;
            1
        }
    }
}

/// `Some(true)` at the root, `Some(false)` to go on, `None` on failure.
#[inline(always)]
fn climb(w: &mut Walk) -> Option<bool> {
    let root = ptr(w.mnt, off!(vfsmount_root)).ok()?;
    if w.dentry == root {
        // The top of a mount: carry on from where it is mounted, until the namespace's root
        // mount, which is its own parent.
        let parent = ptr(w.mount, off!(mount_parent)).ok()?;
        if parent == w.mount {
            return Some(true);
        }
        w.dentry = ptr(w.mount, off!(mount_mountpoint)).ok()?;
        w.mount = parent;
        w.mnt = parent.wrapping_add(off!(mount_mnt) as usize);
        return Some(false);
    }
    let up = ptr(w.dentry, off!(dentry_parent)).ok()?;
    if up == w.dentry {
        // A file system's root that is not a mount's (a detached tree): as far as it goes.
        return Some(true);
    }
    let name = ptr(w.dentry, off!(dentry_name)).ok()?;
    if w.len >= FILENAME_LEN as u64 {
        return None;
    }
    // Twice the kept length: a name read at any offset below FILENAME_LEN fits, which is what
    // lets the verifier accept a variable offset with a constant size.
    let buf = PATH_SCRATCH.get_ptr_mut(0)?;
    let at = (w.len as usize) & (FILENAME_LEN - 1);
    let n = unsafe {
        bpf_probe_read_kernel_str(
            buf.cast::<u8>().add(at).cast(),
            NAME_BUF as u32,
            name.cast(),
        )
    };
    if n <= 0 {
        return None;
    }
    w.len += n as u64;
    w.dentry = up;
    Some(false)
}

//! The kernel's own per-process files and links, read for a process the table knows: each read
//! is checked against the process's start time afterwards, so a reused pid never shows another
//! process's data.

use std::os::unix::ffi::OsStrExt as _;

use fuser::Errno;

use crate::{procfs, table::Process, view::ViewError};

pub fn errno(e: &ViewError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Reads the kernel's per-process file and checks the pid still names the same process, so a
/// reused pid never shows another process's data.
pub fn kernel_file(p: &Process, name: &str) -> Result<Vec<u8>, ViewError> {
    let bytes = procfs::read_file(p.pid, name)?;
    same_process(p)?;
    Ok(bytes)
}

pub fn kernel_link(p: &Process, name: &str) -> Result<Vec<u8>, Errno> {
    let target = std::fs::read_link(format!("/proc/{}/{name}", p.pid))
        .map_err(|e| errno(&ViewError::Io(e)))?;
    same_process(p).map_err(|e| errno(&e))?;
    Ok(target.as_os_str().as_bytes().to_vec())
}

pub fn kernel_fds(p: &Process) -> Result<Vec<u32>, Errno> {
    let rd =
        std::fs::read_dir(format!("/proc/{}/fd", p.pid)).map_err(|e| errno(&ViewError::Io(e)))?;
    let mut fds: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    same_process(p).map_err(|e| errno(&e))?;
    fds.sort_unstable();
    Ok(fds)
}

pub fn same_process(p: &Process) -> Result<(), ViewError> {
    let ns_per_tick = 1_000_000_000 / crate::sys::clock::clock_ticks();
    if procfs::alive_since(p.pid, p.start_boottime, ns_per_tick) {
        Ok(())
    } else {
        Err(ViewError::NoProcess)
    }
}

//! The kernel's own per-process files and links, read for a process the table knows: each read
//! is checked against the process's start time afterwards, so a reused pid never shows another
//! process's data.

use std::os::unix::ffi::OsStrExt as _;

use fuser::Errno;

use crate::{procfs, table::Process, view::ViewError};

/// Kernel files a rendering cannot hold: read to their end they never end or block (`kmsg`),
/// or are a window on memory whose size is the address space (`pagemap`, `kcore`, `kpage*`).
/// They need reads at an offset into the kernel's open file, which a view that renders at
/// open does not make: opening them through the view is EOPNOTSUPP (listed in the README).
pub const UNSERVABLE: &[&str] = &[
    "kcore",
    "kmsg",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "pagemap",
];

/// The most of one kernel file a rendering holds; procfs's text files are far below it.
pub const MAX_READ: u64 = 16 << 20;

/// Whether the kernel file at `path` (its last component) can be rendered at open.
pub fn servable(path: &str) -> bool {
    !UNSERVABLE.contains(&path.rsplit('/').next().unwrap_or(path))
}

/// Reads a kernel file for a rendering: at most `MAX_READ` bytes; EOPNOTSUPP for the
/// unservable.
pub fn read_kernel(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    if !servable(&path.to_string_lossy()) {
        return Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_READ)
        .read_to_end(&mut out)?;
    Ok(out)
}

pub fn errno(e: &ViewError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Reads the kernel's per-process file and checks the pid still names the same process, so a
/// reused pid never shows another process's data.
pub fn kernel_file(p: &Process, name: &str) -> Result<Vec<u8>, ViewError> {
    checked(
        p,
        read_kernel(
            &std::path::Path::new("/proc")
                .join(p.pid.to_string())
                .join(name),
        ),
    )
}

pub fn kernel_link(p: &Process, name: &str) -> Result<Vec<u8>, Errno> {
    let target =
        checked(p, std::fs::read_link(format!("/proc/{}/{name}", p.pid))).map_err(|e| errno(&e))?;
    Ok(target.as_os_str().as_bytes().to_vec())
}

pub fn kernel_fds(p: &Process) -> Result<Vec<u32>, Errno> {
    let names = std::fs::read_dir(format!("/proc/{}/fd", p.pid)).and_then(|rd| {
        rd.map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<Vec<_>>>()
    });
    let mut fds: Vec<u32> = checked(p, names)
        .map_err(|e| errno(&e))?
        .iter()
        .filter_map(|n| n.to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    Ok(fds)
}

/// The kernel's answer about process `p`, once it is known to be still the same process: as
/// it is, error or not (a vanished process is ENOENT).
fn checked<T>(p: &Process, answer: std::io::Result<T>) -> Result<T, ViewError> {
    same_process(p)?;
    answer.map_err(ViewError::Kernel)
}

pub fn same_process(p: &Process) -> Result<(), ViewError> {
    same_start(p.pid, p.start_boottime)
}

/// Whether `pid` is still the process that started at `start`, as the kernel says now.
pub fn same_start(pid: u32, start: u64) -> Result<(), ViewError> {
    let ns_per_tick = crate::sys::clock::ns_per_tick();
    if procfs::alive_since(pid, start, ns_per_tick) {
        Ok(())
    } else {
        Err(ViewError::NoProcess)
    }
}

//! Process file descriptors: a handle on one process that a reused pid cannot redirect.
//!
//! Raw system calls: nix wraps neither pidfd_open(2) nor pidfd_send_signal(2), and glibc's
//! wrappers are newer than some hosts' C library.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use nix::errno::Errno;

/// pidfd_open(2): ESRCH when `pid` is gone, EINVAL when it is a thread, not a process.
pub fn open(pid: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// pidfd_send_signal(2) with no siginfo, as kill(2) sends it; `sig` 0 only checks that the
/// process is still there. A raw signal number: nix's `Signal` has no real-time signals.
pub fn send_signal(pidfd: &OwnedFd, sig: i32) -> Result<(), Errno> {
    // SAFETY: a valid pidfd, a signal number, a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

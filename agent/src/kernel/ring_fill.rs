//! How full the ring buffer is, read from its control pages.

use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};

/// Read-only view of the ring buffer's consumer and producer positions (the first word of its
/// first two pages), to export how full it is without touching the reader.
pub struct RingFill {
    consumer: *const u64,
    producer: *const u64,
    page: usize,
    _fd: OwnedFd,
}

// SAFETY: the pointers are to kernel-shared pages mapped for the lifetime of this value and
// only ever read atomically.
unsafe impl Send for RingFill {}
// SAFETY: as above; reads need no exclusion.
unsafe impl Sync for RingFill {}

impl RingFill {
    pub fn new(fd: BorrowedFd<'_>) -> std::io::Result<Self> {
        let fd = fd.try_clone_to_owned()?;
        let page = crate::sys::page_size() as usize;
        let map = |offset: usize| -> std::io::Result<*const u64> {
            // SAFETY: a fresh read-only shared mapping of a BPF ring buffer's control page; the
            // kernel allows read-only mappings of both (kernel/bpf/ringbuf.c).
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(p as *const u64)
            }
        };
        let consumer = map(0)?;
        let producer = match map(page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping what we mapped just above.
                unsafe { libc::munmap(consumer as *mut libc::c_void, page) };
                return Err(e);
            }
        };
        Ok(Self {
            consumer,
            producer,
            page,
            _fd: fd,
        })
    }

    /// Bytes produced and not yet consumed.
    pub fn used(&self) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: both pointers are page-aligned, mapped for our lifetime, and the kernel
        // updates the words atomically.
        let (c, p) = unsafe {
            (
                (*(self.consumer as *const AtomicU64)).load(Ordering::Acquire),
                (*(self.producer as *const AtomicU64)).load(Ordering::Acquire),
            )
        };
        p.saturating_sub(c)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmapping the two pages mapped in `new`.
        unsafe {
            libc::munmap(self.consumer as *mut libc::c_void, self.page);
            libc::munmap(self.producer as *mut libc::c_void, self.page);
        }
    }
}

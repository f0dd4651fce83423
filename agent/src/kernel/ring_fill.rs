//! How full the ring buffer is, read from its control pages.

use std::{
    ffi::c_void,
    num::NonZeroUsize,
    os::fd::{BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::{
    errno::Errno,
    sys::mman::{MapFlags, ProtFlags, mmap, munmap},
};

/// Read-only view of the ring buffer's consumer and producer positions (the first word of its
/// first two pages), to export how full it is without touching the reader.
pub struct RingFill {
    consumer: NonNull<c_void>,
    producer: NonNull<c_void>,
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
        let len = NonZeroUsize::new(page).ok_or(Errno::EINVAL)?;
        let map = |offset: usize| -> nix::Result<NonNull<c_void>> {
            // SAFETY: a fresh read-only shared mapping of a BPF ring buffer's control page; the
            // kernel allows read-only mappings of both (kernel/bpf/ringbuf.c).
            unsafe {
                mmap(
                    None,
                    len,
                    ProtFlags::PROT_READ,
                    MapFlags::MAP_SHARED,
                    &fd,
                    offset as libc::off_t,
                )
            }
        };
        let consumer = map(0)?;
        let producer = match map(page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping what we mapped just above.
                let _ = unsafe { munmap(consumer, page) };
                return Err(e.into());
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
        // SAFETY: both pointers are page-aligned, mapped for our lifetime, and the kernel
        // updates the words atomically.
        let (c, p) = unsafe {
            (
                self.consumer
                    .cast::<AtomicU64>()
                    .as_ref()
                    .load(Ordering::Acquire),
                self.producer
                    .cast::<AtomicU64>()
                    .as_ref()
                    .load(Ordering::Acquire),
            )
        };
        p.saturating_sub(c)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmapping the two pages mapped in `new`.
        unsafe {
            let _ = munmap(self.consumer, self.page);
            let _ = munmap(self.producer, self.page);
        }
    }
}

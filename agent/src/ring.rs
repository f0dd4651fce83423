//! Drains the kernel's ring buffer. Records are submitted without a wake-up (a wake-up per
//! record costs the traced workload ~20 %), so the reader drains on a short timer and wakes
//! early only when the kernel side forces it because a backlog built up.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    kernel::KernelEvent,
    state::{Msg, State},
};

pub async fn run(
    ring: RingBuf<MapData>,
    state: State,
    mut queries: tokio::sync::mpsc::Receiver<Msg>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let batch = drain(guard.get_inner_mut());
                guard.clear_ready();
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
            }
            _ = tick.tick() => {
                let batch = drain(fd.get_mut());
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
            }
            query = queries.recv() => {
                let Some(query) = query else { break };
                let batch = drain(fd.get_mut());
                if !batch.is_empty() && state.push_events(batch).await.is_err() { break; }
                if state.forward(query).await.is_err() { break; }
            }
            _ = shutdown.changed() => break,
        }
    }
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<KernelEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match KernelEvent::decode(&item) {
            Some(ev) => out.push(ev),
            None => tracing::warn!(len = item.len(), "undecodable ring-buffer record"),
        }
    }
    out
}

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
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
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

//! Which processes ran since the last look (ebpf/src/ran.rs): the `RAN` map's bytes, mapped
//! into the agent, and the process each CPU runs now.

use std::{
    ffi::c_void,
    num::NonZeroUsize,
    os::fd::AsFd as _,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, PerCpuArray};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::KernelError;

/// The marks the hooks leave, read and cleared by whoever refreshes the table's numbers.
pub struct Marks {
    bytes: NonNull<c_void>,
    len: usize,
    on_cpu: PerCpuArray<MapData, u32>,
    /// The map the bytes are of, kept open while they are mapped.
    _ran: MapData,
}

// SAFETY: the mapping is shared with the kernel for the lifetime of this value and is only
// accessed through atomic operations.
unsafe impl Send for Marks {}
// SAFETY: as above; atomic accesses need no exclusion.
unsafe impl Sync for Marks {}

impl Marks {
    pub(super) fn new(ran: MapData, on_cpu: MapData) -> Result<Self, KernelError> {
        let map_err = |name, source| KernelError::Map { name, source };
        let len = ran.info().map_err(|e| map_err("RAN", e))?.max_entries() as usize
            * bpfproc_common::RAN_CHUNK;
        let size = NonZeroUsize::new(len).ok_or(KernelError::Iter("RAN is empty".into()))?;
        // SAFETY: a fresh shared mapping of an mmapable BPF array, exactly its size (its
        // elements are a page each, so it is page-aligned); unmapped in Drop.
        let bytes = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                ran.fd().as_fd(),
                0,
            )
        }
        .map_err(|e| KernelError::Io(e.into()))?;
        let on_cpu = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(on_cpu))
            .map_err(|e| map_err("ON_CPU", e))?;
        Ok(Self {
            bytes,
            len,
            on_cpu,
            _ran: ran,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` bytes, page-aligned, lives as long as `self`, and the
        // kernel only ever stores single bytes into it.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast(), self.len / 8) }
    }

    /// The processes (by pid) that ran, were woken or changed cgroup since the last call, and
    /// those on a CPU now, in pid order; their marks are cleared. `None` if a mark did not fit
    /// (a pid beyond the map): only a pass over every task can tell what ran.
    ///
    /// The CPUs are read first: a task running then is either still on its CPU (and listed)
    /// or has stopped since, and its mark is set before the swap below finds it.
    pub fn take(&self) -> Result<Option<Vec<u32>>, KernelError> {
        let running = self.on_cpu.get(&0, 0).map_err(|source| KernelError::Map {
            name: "ON_CPU",
            source,
        })?;
        let mut pids: Vec<u32> = running.iter().copied().filter(|&p| p != 0).collect();
        let mut overflow = false;
        for (i, word) in self.words().iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            // An atomic swap: a mark stored after it stays for the next call.
            let bytes = word.swap(0, Ordering::AcqRel).to_ne_bytes();
            for (j, b) in bytes.iter().enumerate() {
                if *b == 0 {
                    continue;
                }
                match (i * 8 + j) as u32 {
                    0 => overflow = true,
                    pid => pids.push(pid),
                }
            }
        }
        if overflow {
            return Ok(None);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(Some(pids))
    }

    /// Clears every mark: a pass is about to read every task.
    pub fn clear(&self) {
        for word in self.words() {
            if word.load(Ordering::Relaxed) != 0 {
                word.store(0, Ordering::Release);
            }
        }
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        let _ = unsafe { munmap(self.bytes, self.len) };
    }
}

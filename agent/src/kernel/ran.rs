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
    bytes: Mapped,
    /// A byte per chunk of `RAN_CHUNK` pids, set when a byte in that chunk is.
    summary: Mapped,
    on_cpu: PerCpuArray<MapData, u32>,
}

/// A BPF array's values, mapped into the agent; the map is kept open while they are.
struct Mapped {
    ptr: NonNull<c_void>,
    len: usize,
    _map: MapData,
}

impl Mapped {
    fn new(map: MapData, name: &'static str) -> Result<Self, KernelError> {
        let len = map
            .info()
            .map_err(|source| KernelError::Map { name, source })?
            .max_entries() as usize
            * bpfproc_common::RAN_CHUNK;
        let size = NonZeroUsize::new(len).ok_or(KernelError::Iter(format!("{name} is empty")))?;
        // SAFETY: a fresh shared mapping of an mmapable BPF array, exactly its size (its
        // elements are a page each, so it is page-aligned); unmapped in Drop.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .map_err(|e| KernelError::Io(e.into()))?;
        Ok(Self {
            ptr,
            len,
            _map: map,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` bytes, page-aligned, lives as long as `self`, and the
        // kernel only ever stores single bytes into it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len / 8) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// The bytes of `word` that are set, by index.
fn set_bytes(word: u64) -> impl Iterator<Item = usize> {
    word.to_ne_bytes()
        .into_iter()
        .enumerate()
        .filter(|(_, b)| *b != 0)
        .map(|(j, _)| j)
}

// SAFETY: the mapping is shared with the kernel for the lifetime of this value and is only
// accessed through atomic operations.
unsafe impl Send for Marks {}
// SAFETY: as above; atomic accesses need no exclusion.
unsafe impl Sync for Marks {}

impl Marks {
    pub(super) fn new(
        ran: MapData,
        summary: MapData,
        on_cpu: MapData,
    ) -> Result<Self, KernelError> {
        let on_cpu =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(on_cpu)).map_err(|source| {
                KernelError::Map {
                    name: "ON_CPU",
                    source,
                }
            })?;
        Ok(Self {
            bytes: Mapped::new(ran, "RAN")?,
            summary: Mapped::new(summary, "RAN_SUMMARY")?,
            on_cpu,
        })
    }

    /// The words of the chunks whose summary byte was set, each with the index of its first
    /// word, the summary bytes cleared first (the hooks set a chunk's byte before its
    /// summary's, so a mark made after this look has its summary set again for the next one).
    fn marked_chunks(&self) -> impl Iterator<Item = (usize, &[AtomicU64])> {
        let chunk_words = bpfproc_common::RAN_CHUNK / 8;
        let words = self.bytes.words();
        let chunks = words.len() / chunk_words;
        self.summary
            .words()
            .iter()
            .enumerate()
            .filter(|(_, w)| w.load(Ordering::Relaxed) != 0)
            .flat_map(move |(i, w)| set_bytes(w.swap(0, Ordering::AcqRel)).map(move |j| i * 8 + j))
            .filter(move |&c| c < chunks)
            .map(move |c| {
                (
                    c * chunk_words,
                    &words[c * chunk_words..(c + 1) * chunk_words],
                )
            })
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
        for (first, words) in self.marked_chunks() {
            for (i, word) in words.iter().enumerate() {
                if word.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                // An atomic swap: a mark stored after it stays for the next call.
                for j in set_bytes(word.swap(0, Ordering::AcqRel)) {
                    match ((first + i) * 8 + j) as u32 {
                        0 => overflow = true,
                        pid => pids.push(pid),
                    }
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
        for (_, words) in self.marked_chunks() {
            for word in words {
                if word.load(Ordering::Relaxed) != 0 {
                    word.store(0, Ordering::Release);
                }
            }
        }
    }
}

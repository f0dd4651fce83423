//! The live processes in pid order, kept in chunks of a few hundred that the table's
//! snapshots share. A snapshot is a copy of the chunk list, not of every entry: at 100,000
//! processes copying the entries (an `Arc` each, scattered over the heap) cost ~8 ms per
//! snapshot, and as much again to drop. A change copies only its chunk, and only if a snapshot
//! still holds it. Readers of many snapshots (the listing's JSON, the scrape's sums) keep what
//! they derived from a chunk and redo it only for chunks that are not the same `Arc` any more.

use std::sync::{Arc, OnceLock};

use super::Process;

/// A chunk is split past twice this many entries.
const CHUNK: usize = 512;

/// Live processes by pid; see the module's comment.
#[derive(Clone, Default)]
pub struct Live {
    chunks: Vec<Arc<Chunk>>,
    len: usize,
}

/// A run of live processes, in pid order, never empty while it is in a `Live`. Their pids are
/// kept beside them: a lookup or a walk over pids reads those, not every entry (each a cache
/// miss of its own).
#[derive(Default)]
pub struct Chunk {
    pids: Vec<u32>,
    procs: Vec<Arc<Process>>,
    ppids: OnceLock<Vec<u32>>,
}

impl Clone for Chunk {
    fn clone(&self) -> Self {
        Self::new(self.procs.clone())
    }
}

impl Chunk {
    fn new(procs: Vec<Arc<Process>>) -> Self {
        Self {
            pids: procs.iter().map(|p| p.pid).collect(),
            procs,
            ppids: OnceLock::new(),
        }
    }

    pub fn processes(&self) -> &[Arc<Process>] {
        &self.procs
    }

    /// The processes' pids, in the same order.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Each process's parent, in the same order: a search for the children of a few
    /// processes reads these, not every entry.
    pub fn ppids(&self) -> &[u32] {
        self.ppids
            .get_or_init(|| self.procs.iter().map(|p| p.ppid).collect())
    }

    /// The chunk, to change: what was derived from its entries goes.
    fn edit(this: &mut Arc<Self>) -> &mut Self {
        let c = Arc::make_mut(this);
        c.ppids.take();
        c
    }

    fn first(&self) -> u32 {
        self.pids.first().copied().unwrap_or(0)
    }

    fn find(&self, pid: u32) -> Result<usize, usize> {
        self.pids.binary_search(&pid)
    }
}

impl Live {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, in pid order: a chunk that is the same `Arc` as in an earlier snapshot
    /// holds the same entries.
    pub fn chunks(&self) -> &[Arc<Chunk>] {
        &self.chunks
    }

    /// The chunk whose pids `pid` falls among (the last one starting at or below it).
    fn chunk_of(&self, pid: u32) -> Option<usize> {
        if self.chunks.is_empty() {
            return None;
        }
        Some(
            self.chunks
                .partition_point(|c| c.first() <= pid)
                .saturating_sub(1),
        )
    }

    pub fn get(&self, pid: &u32) -> Option<&Arc<Process>> {
        let c = &self.chunks[self.chunk_of(*pid)?];
        c.find(*pid).ok().map(|i| &c.procs[i])
    }

    pub fn contains_key(&self, pid: &u32) -> bool {
        self.get(pid).is_some()
    }

    /// The entry, to change it: its chunk is copied first if a snapshot holds it.
    pub fn get_mut(&mut self, pid: &u32) -> Option<&mut Arc<Process>> {
        let ci = self.chunk_of(*pid)?;
        let i = self.chunks[ci].find(*pid).ok()?;
        Some(&mut Chunk::edit(&mut self.chunks[ci]).procs[i])
    }

    /// The entry for `pid`, made by `make` if there is none.
    pub fn get_or_insert_with(
        &mut self,
        pid: u32,
        make: impl FnOnce() -> Arc<Process>,
    ) -> &mut Arc<Process> {
        if !self.contains_key(&pid) {
            self.insert(pid, make());
        }
        self.get_mut(&pid).expect("just inserted")
    }

    /// Inserts or replaces `pid`'s entry; returns the one replaced.
    pub fn insert(&mut self, pid: u32, p: Arc<Process>) -> Option<Arc<Process>> {
        debug_assert_eq!(pid, p.pid);
        let Some(ci) = self.chunk_of(pid) else {
            self.chunks.push(Arc::new(Chunk::new(vec![p])));
            self.len = 1;
            return None;
        };
        let chunk = Chunk::edit(&mut self.chunks[ci]);
        match chunk.find(pid) {
            Ok(i) => Some(std::mem::replace(&mut chunk.procs[i], p)),
            Err(i) => {
                chunk.pids.insert(i, pid);
                chunk.procs.insert(i, p);
                self.len += 1;
                if chunk.procs.len() > 2 * CHUNK {
                    let tail = chunk.procs.split_off(CHUNK);
                    chunk.pids.truncate(CHUNK);
                    self.chunks.insert(ci + 1, Arc::new(Chunk::new(tail)));
                }
                None
            }
        }
    }

    pub fn remove(&mut self, pid: &u32) -> Option<Arc<Process>> {
        let ci = self.chunk_of(*pid)?;
        let i = self.chunks[ci].find(*pid).ok()?;
        let chunk = Chunk::edit(&mut self.chunks[ci]);
        chunk.pids.remove(i);
        let p = chunk.procs.remove(i);
        self.len -= 1;
        if chunk.procs.is_empty() {
            self.chunks.remove(ci);
        } else if chunk.procs.len() < CHUNK / 4 && ci + 1 < self.chunks.len() {
            // Keep chunks from thinning out as processes end: merge into the next one.
            let next = self.chunks.remove(ci + 1);
            let chunk = Chunk::edit(&mut self.chunks[ci]);
            chunk.pids.extend_from_slice(&next.pids);
            chunk.procs.extend(next.procs.iter().cloned());
        }
        Some(p)
    }

    /// Every entry, in pid order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Process>> + Clone {
        self.chunks.iter().flat_map(|c| c.procs.iter())
    }

    /// Every entry, in pid order (`iter`, as a map's values).
    pub fn values(&self) -> impl Iterator<Item = &Arc<Process>> + Clone {
        self.iter()
    }
}

impl FromIterator<Arc<Process>> for Live {
    fn from_iter<I: IntoIterator<Item = Arc<Process>>>(iter: I) -> Self {
        let mut live = Live::default();
        for p in iter {
            live.insert(p.pid, p);
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32) -> Arc<Process> {
        let mut p = Process::from_record(
            // SAFETY: plain integers and arrays.
            &unsafe { std::mem::zeroed() },
            0,
            super::super::Origin::Event,
        );
        p.pid = pid;
        Arc::new(p)
    }

    #[test]
    fn keeps_pid_order_through_splits_and_merges() {
        let mut live = Live::default();
        // Out of order, enough to split several times.
        let pids: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 5003 + 1).collect();
        for &pid in &pids {
            assert!(live.insert(pid, proc(pid)).is_none());
        }
        assert_eq!(live.len(), pids.len());
        assert!(live.chunks().len() > 4);
        let listed: Vec<u32> = live.values().map(|p| p.pid).collect();
        let mut sorted = pids.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
        for &pid in &pids {
            assert_eq!(live.get(&pid).map(|p| p.pid), Some(pid));
        }
        assert!(live.get(&0).is_none() && live.get(&6000).is_none());
        // Removing most of them merges the thinned chunks and keeps the rest findable.
        for &pid in pids.iter().filter(|p| *p % 10 != 0) {
            assert_eq!(live.remove(&pid).map(|p| p.pid), Some(pid));
        }
        let left: Vec<u32> = sorted.iter().copied().filter(|p| p % 10 == 0).collect();
        assert_eq!(live.values().map(|p| p.pid).collect::<Vec<_>>(), left);
        assert_eq!(live.len(), left.len());
        assert!(live.chunks().iter().all(|c| !c.processes().is_empty()));
        for pid in left {
            assert!(live.contains_key(&pid));
        }
    }

    #[test]
    fn a_change_copies_only_its_chunk_and_leaves_the_snapshot_alone() {
        let mut live = Live::default();
        for pid in 1..=3000 {
            live.insert(pid, proc(pid));
        }
        let snapshot = live.clone();
        let before = live.get(&2000).unwrap().clone();
        *live.get_mut(&2000).unwrap() = proc(2000);
        assert!(Arc::ptr_eq(snapshot.get(&2000).unwrap(), &before));
        assert!(!Arc::ptr_eq(live.get(&2000).unwrap(), &before));
        let shared = live
            .chunks()
            .iter()
            .zip(snapshot.chunks())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, live.chunks().len() - 1, "one chunk copied");
    }
}

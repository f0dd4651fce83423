//! What a view needs of the process table, as a trait: `Live` is the agent's table (the actor
//! behind `State`, asked from a FUSE thread), and the core's unit tests use a fixed one, so
//! the file semantics are tested without BPF, root or a mount.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{
    state::{Gone, Snapshot, State},
    table::Process,
};

pub trait Processes: Send + Sync {
    /// The table with every event before the call applied, its numbers at most `bound` old.
    /// Blocks the calling thread (a FUSE thread, never an async worker).
    fn snapshot(&self, bound: Duration) -> Result<Arc<Snapshot>, Gone>;

    /// `pid`'s entry with numbers at most `bound` old (read on its own if they are older,
    /// unless `share`: see `State::process`), and the snapshot it is of.
    fn process(
        &self,
        pid: u32,
        bound: Duration,
        share: bool,
    ) -> Result<(Arc<Snapshot>, Option<Arc<Process>>), Gone>;

    /// The agent's staleness bound.
    fn max_age(&self) -> Duration;

    /// Whether the table's pids are this host's, so the kernel can be asked about them.
    fn of_this_host(&self) -> bool {
        true
    }
}

/// The agent's table.
#[derive(Clone)]
pub struct Live {
    pub state: State,
    pub rt: tokio::runtime::Handle,
    /// Set when the agent leaves the view to the next one (`Mounts::leave`): once the table
    /// is gone, a request that needs it is never answered (its thread waits for the process
    /// to end), so the next agent answers it when the kernel sends it again
    /// (FUSE_NOTIFY_RESEND) rather than this one failing it.
    pub leaving: Arc<AtomicBool>,
}

impl Live {
    fn settle<T>(&self, r: Result<T, Gone>) -> Result<T, Gone> {
        if r.is_err() && self.leaving.load(Ordering::Acquire) {
            loop {
                std::thread::park();
            }
        }
        r
    }
}

impl Processes for Live {
    fn snapshot(&self, bound: Duration) -> Result<Arc<Snapshot>, Gone> {
        if let Some(s) = self.state.current(bound) {
            return Ok(s);
        }
        self.settle(self.rt.block_on(self.state.snapshot_within(bound)))
    }

    fn process(
        &self,
        pid: u32,
        bound: Duration,
        share: bool,
    ) -> Result<(Arc<Snapshot>, Option<Arc<Process>>), Gone> {
        self.settle(self.rt.block_on(self.state.process(pid, bound, share)))
    }

    fn max_age(&self) -> Duration {
        self.state.max_age
    }
}

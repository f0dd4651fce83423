//! The `cache=MS` mode: the kernel answers opens and reads from its own caches, and the agent
//! tells it what to forget.
//!
//! Such a mount answers no OPEN (FUSE's no-open mode), so every file is read through the page
//! cache, which needs a size first: GETATTR renders the file and reports its length, and the
//! READ that follows serves the same bytes. Attributes then stay valid until the agent
//! invalidates them: every MS/2 a ticker takes a snapshot (at most MS/2 old) and invalidates
//! the inodes of processes whose record changed or that are gone, and every file no record
//! describes (the host-wide files, and kernel files such as `cgroup` that other processes can
//! change). A process that slept through the period keeps its cached pages, so `ps` on a
//! quiet host asks the agent almost nothing; nothing the kernel serves is older than MS.
//!
//! Each tick costs a pass over the host (26 ms at 10,000 processes). A mount nobody has asked
//! anything for `IDLE_AFTER` has every stamped inode invalidated and forgotten, and its ticker
//! then rests: the next reader starts cold instead of the agent paying for it meanwhile.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, BuildHasherDefault},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
};

use fuser::{Errno, FileAttr, FileType, INodeNo, Notifier};

use super::ProcFs;
use crate::fs::{
    processes::Processes,
    tree::{Kind, Node},
};

/// How long an inode's stamp outlives its last GETATTR; also the attribute and name TTL of a
/// cache mount, so that the kernel never holds attributes for an inode the ticker has
/// forgotten. Ten minutes: a tool polling every few minutes still finds its names and pages
/// (a stamp is ~100 bytes; 60,000 of them at 10,000 processes are ~6 MB).
pub(super) const STAMP_TTL: Duration = Duration::from_secs(600);

/// How long a cache mount is kept warm without a request. A `ps` every 15 s (a scrape
/// interval) keeps it warm; past a minute, a cold read costs less than the passes would have.
const IDLE_AFTER: Duration = Duration::from_secs(60);

/// What the kernel was last told about each inode of a cache mount.
#[derive(Default)]
pub(super) struct Rendered {
    by_ino: HashMap<u64, Stamp>,
    swept: Option<Instant>,
    /// The last request that reached this mount.
    asked: Option<Instant>,
}

struct Stamp {
    /// The process the node belongs to and the revision of its record when rendered; `None`
    /// for nodes no record describes (invalidated on every tick).
    rev: Option<(u32, u64)>,
    hash: u64,
    size: u64,
    mtime: SystemTime,
    /// Kept for one period, for the READ after a GETATTR.
    bytes: Option<Arc<Vec<u8>>>,
    at: Instant,
}

impl Rendered {
    /// Drops the stamps `stale` picks and returns their inodes, for the kernel to forget.
    fn forget(&mut self, stale: impl Fn(&Stamp) -> bool) -> Vec<u64> {
        let mut gone = Vec::new();
        self.by_ino.retain(|ino, s| {
            let keep = !stale(s);
            if !keep {
                gone.push(*ino);
            }
            keep
        });
        gone
    }

    fn fresh(&mut self, ino: u64, period: Duration) -> Option<Arc<Vec<u8>>> {
        self.asked = Some(Instant::now());
        self.by_ino
            .get(&ino)
            .filter(|r| r.at.elapsed() <= period)
            .and_then(|r| r.bytes.clone())
    }

    /// Records what the kernel is about to be told of `ino`; contents that did not change keep
    /// their mtime, so FUSE_AUTO_INVAL_DATA keeps the kernel's pages. Returns (size, mtime).
    fn insert(
        &mut self,
        ino: u64,
        rev: Option<(u32, u64)>,
        bytes: Option<Arc<Vec<u8>>>,
        period: Duration,
    ) -> (u64, SystemTime) {
        let now = Instant::now();
        self.asked = Some(now);
        if self.swept.is_none_or(|t| now.duration_since(t) > period) {
            self.by_ino.retain(|_, r| {
                if now.duration_since(r.at) > period {
                    r.bytes = None;
                }
                now.duration_since(r.at) <= STAMP_TTL
            });
            self.swept = Some(now);
        }
        let (hash, size) = bytes.as_ref().map_or((0, 0), |b| {
            (
                BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                    .hash_one(b.as_slice()),
                b.len() as u64,
            )
        });
        let r = self.by_ino.entry(ino).or_insert_with(|| Stamp {
            rev,
            hash,
            size,
            mtime: SystemTime::now(),
            bytes: None,
            at: now,
        });
        if (r.hash, r.size) != (hash, size) {
            (r.hash, r.size, r.mtime) = (hash, size, SystemTime::now());
        }
        r.rev = rev;
        r.bytes = bytes;
        r.at = now;
        (r.size, r.mtime)
    }
}

impl ProcFs {
    /// The stamp a cache mount keeps for `node`: its process and record revision if it
    /// belongs to one and follows it.
    fn stamp_rev(&self, node: Node) -> Option<(u32, u64)> {
        let (pid, follows) = match node {
            Node::ProcDir(pid) | Node::ThreadDir(pid, _) | Node::Fd(pid, _) => (pid, true),
            Node::ProcFile(pid, i) => match self.files_table().get(i as usize).map(|e| e.kind) {
                Some(Kind::File(show)) => (pid, show.follows_record),
                _ => (pid, true),
            },
            Node::ThreadFile(pid, _, _) => (pid, true),
            _ => return None,
        };
        if !follows {
            return None;
        }
        let (_, p) = self.process(pid).ok()?;
        Some((pid, p.rev))
    }

    /// On a `cache=` mount, attributes carry the size and mtime of the contents (rendered
    /// now, kept for the READ that follows), and every node the kernel learns of is stamped
    /// for the invalidation ticker.
    pub(super) fn with_contents(
        &self,
        req: &super::Asker,
        node: Node,
        mut attr: FileAttr,
    ) -> FileAttr {
        let Some(bound) = self.opts.cache else {
            return attr;
        };
        // The kernel serves cached pages to whoever passes its mode check, so a file procfs
        // shows only to those who may ptrace the process is shown to its owner only.
        if let Node::ProcFile(_, i) = node
            && let Some(Kind::File(show)) = self.files_table().get(i as usize).map(|e| e.kind)
            && show.ptrace_read
        {
            attr.perm &= 0o700;
        }
        // Taken before rendering, for the reason given in cached_read.
        let rev = self.stamp_rev(node);
        let bytes = if attr.kind == FileType::RegularFile {
            match self.render(req, node) {
                Ok(b) => Some(Arc::new(b)),
                // Not renderable now (e.g. a kernel thread's environ): the open will say so.
                Err(_) => return attr,
            }
        } else {
            None
        };
        let is_file = bytes.is_some();
        if let Ok(mut r) = self.rendered.lock() {
            let (size, mtime) = r.insert(attr.ino.0, rev, bytes, bound / 2);
            if is_file {
                (attr.size, attr.mtime, attr.ctime) = (size, mtime, mtime);
            }
        }
        attr
    }

    /// A READ without a handle (the kernel opened the file itself).
    pub(super) fn cached_read(&self, req: &super::Asker, ino: u64) -> Result<Arc<Vec<u8>>, Errno> {
        let bound = self.opts.cache.ok_or(Errno::EBADF)?;
        if let Some(b) = self
            .rendered
            .lock()
            .ok()
            .and_then(|mut r| r.fresh(ino, bound / 2))
        {
            return Ok(b);
        }
        let node = Node::from_ino(ino).ok_or(Errno::ENOENT)?;
        // The revision before the rendering: if the record moves in between, the ticker sees
        // a newer one and invalidates, rather than taking older contents for current.
        let rev = self.stamp_rev(node);
        let bytes = Arc::new(self.render(req, node)?);
        if let Ok(mut r) = self.rendered.lock() {
            r.insert(ino, rev, Some(bytes.clone()), bound / 2);
        }
        Ok(bytes)
    }

    /// A request reached a cache mount: it is in use, and its ticker keeps it warm.
    pub(super) fn asked(&self) {
        if self.opts.cache.is_some()
            && let Ok(mut r) = self.rendered.lock()
        {
            r.asked = Some(Instant::now());
        }
    }

    /// The ticker of a cache mount, to start once the session can send notifications.
    pub fn invalidator(&self) -> Option<Invalidator> {
        let bound = self.opts.cache?;
        Some(Invalidator {
            rendered: Arc::downgrade(&self.rendered),
            table: self.table.clone(),
            period: bound / 2,
        })
    }
}

pub struct Invalidator {
    rendered: Weak<Mutex<Rendered>>,
    table: Arc<dyn Processes>,
    period: Duration,
}

impl Invalidator {
    /// Runs until the mount is gone (its file system, which owns the stamps, is dropped).
    pub fn spawn(self, notifier: Notifier) {
        let spawned = std::thread::Builder::new()
            .name("bpfproc-inval".into())
            .spawn(move || self.run(&notifier));
        if let Err(e) = spawned {
            tracing::error!("cannot start a cache mount's invalidation thread: {e}");
        }
    }

    fn run(&self, notifier: &Notifier) {
        let mut nap = self.period;
        loop {
            std::thread::sleep(nap);
            nap = self.period;
            let Some(rendered) = self.rendered.upgrade() else {
                return;
            };
            let idle = match rendered.lock() {
                // Nothing stamped: the kernel holds nothing of ours, and no pass is needed.
                Ok(r) if r.by_ino.is_empty() => continue,
                Ok(r) => r
                    .asked
                    .is_none_or(|t| t.elapsed() >= IDLE_AFTER.max(self.period * 4)),
                Err(_) => return,
            };
            // Idle: forget everything, with no pass. Otherwise forget what moved since the
            // stamp, by a snapshot asked early enough that the pass lands before the numbers
            // the mount's requests use are a period old: a request then never waits for one.
            let snap = if idle {
                None
            } else {
                let asked = Instant::now();
                let Ok(snap) = self.table.snapshot(self.period / 2) else {
                    return;
                };
                let pass = asked.elapsed();
                let age = Duration::from_nanos(
                    crate::sys::clock::boot_ns().saturating_sub(snap.refreshed_at),
                );
                nap = self
                    .period
                    .saturating_sub(age + pass * 2)
                    .max(self.period / 4);
                Some(snap)
            };
            let Ok(mut r) = rendered.lock() else {
                return;
            };
            let stale = r.forget(|s| match (&snap, s.rev) {
                (Some(snap), Some((pid, rev))) => snap.get(pid).is_none_or(|p| p.rev != rev),
                _ => true,
            });
            drop(r);
            for ino in stale {
                // ENOENT: the kernel had already forgotten the inode, which is as good.
                if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0)
                    && e.raw_os_error() != Some(libc::ENOENT)
                {
                    tracing::debug!("invalidating inode {ino:#x}: {e}");
                    if e.raw_os_error() == Some(libc::ENODEV) {
                        return;
                    }
                }
            }
        }
    }
}

//! The view's core: what a node is (the inode encodes it, fs/tree.rs), its attributes, its
//! children, its contents, who may do what with it, asked of the process table through the
//! `Processes` trait. The operations over it are ops.rs; the transports are thin adapters
//! (adapter.rs for fuser's /dev/fuse threads, uring.rs for FUSE-over-io_uring queues). File
//! contents are rendered once at open and served from that copy: by READs (direct_io, so the
//! size 0 that getattr reports never truncates a read), or with `-o passthrough` by the kernel
//! itself from a memfd (passthrough.rs). The core is tested without a mount against a fixed
//! table (tests.rs).

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use fusewire::window;

pub(super) use adapter::adopt;
use kernel::reader_running;
pub(super) use ops::{BACKED_OPEN, Found, Opened, RENDERED_OPEN};

// Personality-specific parts of the adapter, and the cache= mode, as child modules so they
// share its internals.
mod adapter;
mod cache;
mod control_io;
mod kernel;
mod ops;
mod passthrough;
mod qnx;
mod svr4;
#[cfg(test)]
mod tests;
pub(super) mod uring;

use super::{
    access::{self, EXEC, READ, WRITE, Who},
    kernel_files::{errno, kernel_fds, kernel_link, read_kernel, same_process, same_start},
    kernel_tree::{KPath, KernelTree},
    options::{MountOptions, Scope},
    personality::{self, Descriptor},
    processes::Processes,
    show::Ctx,
    tree::{
        Bytes, ControlFile, Entry, Global, GlobalKind, Kind, Node, PTRACE_READ, Show, entry_index,
        global_child, global_children, thread_files,
    },
};
use crate::{
    control::{Caller, CtlError},
    state::Snapshot,
    sys::{cgroup, ns, privs},
    table::Process,
    view::{Host, ViewError},
};

/// Attributes are never cached: every stat(2) asks, so a process that exited is ENOENT at once.
const TTL: Duration = Duration::ZERO;
/// Names are: a cached name of a process that has gone still leads to an inode whose every
/// operation answers ENOENT (attributes and contents are always asked for), and an inode number
/// encodes only the pid, so a reused pid's cached name shows the new process. This saves two
/// LOOKUP round trips per file a tool opens. An absent name is cached only where nothing can
/// ever be (`never_holds`). A `cache=` mount keeps names longer (`entry_ttl`).
const ENTRY_TTL: Duration = Duration::from_secs(60);

/// Who asks: the fields of a request's header the handlers use, whichever transport brought
/// it (fuser's /dev/fuse loop, or fuse/uring.rs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Asker {
    uid: u32,
    gid: u32,
    /// The calling thread, as FUSE reports it.
    pid: u32,
}

thread_local! {
    /// The thread making the request this FUSE thread is answering (0: none). A scoped view
    /// lets its caller reach its own process (`visible`), and the lookups of a process by
    /// pid that decide it carry no asker; set whenever an `Asker` is made for a request.
    static ASKING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Asker {
    /// The asker of a request this thread answers now.
    pub(super) fn new(uid: u32, gid: u32, pid: u32) -> Self {
        ASKING.with(|a| a.set(pid));
        Self { uid, gid, pid }
    }

    fn uid(&self) -> u32 {
        self.uid
    }
    fn gid(&self) -> u32 {
        self.gid
    }
    fn pid(&self) -> u32 {
        self.pid
    }
}

impl From<&Request> for Asker {
    fn from(req: &Request) -> Self {
        Self::new(req.uid(), req.gid(), req.pid())
    }
}

/// The control layer, for the control files.
#[derive(Clone)]
pub struct ControlFiles {
    pub control: crate::control::Control,
    pub waiter: crate::control::wait::Waiter,
}

/// An open file: rendered bytes, or a control file bound to its process and opener.
#[derive(Clone)]
enum Handle {
    Bytes(Arc<Vec<u8>>),
    /// Rendered into a memfd the kernel reads from itself (passthrough.rs).
    Backed {
        ino: u64,
    },
    Control {
        pid: u32,
        ctl: ControlFile,
        caller: Caller,
    },
    /// One of the kernel's own files opened for writing, with the opener's credentials
    /// (kernel.rs `open_through`); an O_RDWR open also has a rendering to read.
    Through {
        file: Arc<Mutex<std::fs::File>>,
        bytes: Option<Arc<Vec<u8>>>,
    },
}

pub struct ProcFs {
    table: Arc<dyn Processes>,
    host: Host,
    rt: tokio::runtime::Handle,
    opts: MountOptions,
    control: Option<ControlFiles>,
    scope: Mutex<ScopeCache>,
    files: Mutex<HashMap<u64, Handle>>,
    passthrough: passthrough::Passthrough,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEnt>>>>,
    rendered: Arc<Mutex<cache::Rendered>>,
    next_fh: AtomicU64,
    /// This view's first handle: one below it was opened from an agent this one took the
    /// connection over from (`inherited`).
    first_fh: u64,
    /// The QNX personality's `as`/`ctl` modes and writers (unused by the others).
    qnx: qnx::QnxFiles,
    strategy: Strategy,
    /// The mount's personality, everything it decides.
    desc: &'static Descriptor,
    /// Nodes served from the kernel's own subtrees.
    kernel: KernelTree,
}

/// What a mount's options decide for every request, settled once at mount rather than tested
/// inside each operation.
#[derive(Clone, Copy, Debug)]
struct Strategy {
    /// Control files are served: not on a `cache=` mount, since the kernel would answer their
    /// opens and cache their reads.
    control_files: bool,
    /// How long the kernel may keep attributes: never on a never-stale mount; a `cache=`
    /// mount's stay until the agent invalidates them (fuse/cache.rs).
    attr_ttl: Duration,
    /// How long the kernel may keep a name: a `cache=` mount's as long as its attributes, so a
    /// tool that polls less often than ENTRY_TTL does not look every name up again; the
    /// ticker's invalidations still reach every inode whose process changed or went.
    entry_ttl: Duration,
    /// The least staleness bound: half a `cache=` mount's period (its ticker refreshes at
    /// that pace), else none beyond the agent's.
    bound_floor: Duration,
    /// How old the numbers a file is rendered from may be: none on a never-stale mount (each
    /// open reads its process from the kernel), the mount's bound on a `cache=` one.
    read_bound: Option<Duration>,
}

impl Strategy {
    fn of(opts: &MountOptions) -> Self {
        match opts.cache {
            Some(period) => Self {
                control_files: false,
                attr_ttl: cache::STAMP_TTL,
                entry_ttl: cache::STAMP_TTL,
                bound_floor: period / 2,
                read_bound: None,
            },
            None => Self {
                control_files: true,
                attr_ttl: TTL,
                entry_ttl: ENTRY_TTL,
                bound_floor: Duration::ZERO,
                read_bound: Some(Duration::ZERO),
            },
        }
    }
}

struct DirEnt {
    ino: u64,
    kind: FileType,
    name: Vec<u8>,
}

/// The cgroup ids (cgroup2 directory inode numbers, which are the kernfs ids BPF reports) in
/// the mount's scope, re-read at most once a second so new child cgroups join the view.
struct ScopeCache {
    root: Option<PathBuf>,
    ids: HashSet<u64>,
    read_at: Option<Instant>,
}

impl ScopeCache {
    fn new(scope: &Scope) -> std::io::Result<Self> {
        let root = match scope {
            Scope::All => None,
            Scope::Cgroup(p) => Some(cgroup::dir(p)?),
            Scope::CgroupOf(pid) => {
                let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
                let path = text
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .ok_or_else(|| {
                        std::io::Error::other(format!("process {pid} has no cgroup v2 path"))
                    })?;
                Some(cgroup::root()?.join(path.trim_start_matches('/')))
            }
        };
        if let Some(r) = &root
            && !r.is_dir()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cgroup {} does not exist", r.display()),
            ));
        }
        Ok(Self {
            root,
            ids: HashSet::new(),
            read_at: None,
        })
    }

    fn contains(&mut self, cgroup_id: u64) -> bool {
        let Some(root) = &self.root else {
            return true;
        };
        if self
            .read_at
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.ids = cgroup::subtree_ids(root);
            self.read_at = Some(Instant::now());
        }
        self.ids.contains(&cgroup_id)
    }
}

impl ProcFs {
    pub fn new(
        table: Arc<dyn Processes>,
        host: Host,
        rt: tokio::runtime::Handle,
        opts: MountOptions,
        control: Option<ControlFiles>,
    ) -> std::io::Result<Self> {
        let scope = ScopeCache::new(&opts.scope)?;
        let qnx = qnx::QnxFiles::new(opts.umask);
        let strategy = Strategy::of(&opts);
        let desc = personality::descriptor(opts.personality);
        // Handles count up from the boot clock's nanoseconds: an agent that takes a
        // connection over starts later than the one before it opened its last handle (each
        // open takes far more than a nanosecond), so its handles never collide with those that
        // processes still hold from before, and it can tell those apart.
        let first_fh = crate::sys::clock::boot_ns().max(1);
        Ok(Self {
            table,
            host,
            rt,
            opts,
            control,
            scope: Mutex::new(scope),
            files: Mutex::new(HashMap::new()),
            passthrough: passthrough::Passthrough::default(),
            dirs: Mutex::new(HashMap::new()),
            rendered: Arc::default(),
            next_fh: AtomicU64::new(first_fh),
            first_fh,
            qnx,
            strategy,
            desc,
            kernel: KernelTree::default(),
        })
    }

    /// The table as it is now, every event applied. Which processes there are needs no
    /// numbers, so its numbers may be of any age (they are brought within the bound process
    /// by process, `process`), unless the mount shows a cgroup's processes only: a move to
    /// another cgroup has no event, so the listing needs numbers within the bound.
    fn snapshot(&self) -> Result<Arc<Snapshot>, Errno> {
        let bound = match self.opts.scope {
            Scope::All => Duration::MAX,
            _ => self.bound(),
        };
        self.table.snapshot(bound).map_err(|_| Errno::EIO)
    }

    /// How old this mount's numbers may be.
    fn bound(&self) -> Duration {
        self.table.max_age().max(self.strategy.bound_floor)
    }

    fn attr_ttl(&self) -> Duration {
        self.strategy.attr_ttl
    }

    fn entry_ttl(&self) -> Duration {
        self.strategy.entry_ttl
    }

    /// Whether `e` is served by this mount.
    fn serves(&self, e: &Entry) -> bool {
        self.strategy.control_files || !matches!(e.kind, Kind::Control(_))
    }

    /// The process for `pid` if it is live and in this mount's scope, its numbers within the
    /// mount's bound.
    fn process(&self, pid: u32) -> Result<(Arc<Snapshot>, Arc<Process>), Errno> {
        self.process_within(pid, self.bound())
    }

    /// The process for `pid` as contents are rendered from it: on a never-stale mount its
    /// threads read from the kernel now (the narrowed iterator read), so the bytes an open
    /// returns are the kernel's at or after the open; on a `cache=` mount within its bound.
    fn process_now(&self, pid: u32) -> Result<(Arc<Snapshot>, Arc<Process>), Errno> {
        self.process_within(pid, self.strategy.read_bound.unwrap_or(self.bound()))
    }

    fn process_within(
        &self,
        pid: u32,
        bound: Duration,
    ) -> Result<(Arc<Snapshot>, Arc<Process>), Errno> {
        // A stale process is read on its own (~8 µs); a cache= mount, whose `ps` asks about
        // every process, shares passes while they are cheap (State::process). (The stamp a
        // cache mount keeps is the table record's revision, taken before rendering: a newer
        // record makes the ticker invalidate, never keep older contents.)
        let (snap, p) = self
            .table
            .process(pid, bound, self.opts.cache.is_some())
            .map_err(|_| Errno::EIO)?;
        let p = match p {
            Some(p) => p,
            // procfs answers a thread's id as a directory too, though it lists only
            // processes: its thread group's.
            None => match self.caller_tgid(pid) {
                Ok(tgid) if tgid != pid => {
                    // Threads have no event: a new one is in the kernel's list only.
                    let now = self.strategy.read_bound.unwrap_or(bound);
                    let (_, p) = self.process_within(tgid, now)?;
                    if !p.tasks.iter().any(|t| t.tid == pid) {
                        return Err(Errno::ENOENT);
                    }
                    p
                }
                _ => return Err(Errno::ENOENT),
            },
        };
        if !self.visible(&p) && !Self::callers_own(&p) {
            return Err(Errno::ENOENT);
        }
        Ok((snap, p))
    }

    /// Whether `p` is the process making the request: a scoped view does not list it, but
    /// lets it reach its own directory (`self`, `thread-self`), as the tools that check
    /// `/proc/self/stat` before anything else, or read `/proc/mounts` through it, need.
    fn callers_own(p: &Process) -> bool {
        let tid = ASKING.with(std::cell::Cell::get);
        tid != 0 && p.exit.is_none() && (p.pid == tid || p.tasks.iter().any(|t| t.tid == tid))
    }

    fn visible(&self, p: &Process) -> bool {
        // A zombie is reaped (and gone from /proc) an RCU grace period before the free event
        // that removes it from the table, 15-30 ms here: for the few zombies, the kernel says
        // whether it is still there.
        if p.exit.is_some() && same_process(p).is_err() {
            return false;
        }
        // The cgroup from the fork or exec record until a pass reads one: a process forked
        // into a `cgroup=` view's cgroup is in the view at once, not from the next pass.
        match p.cgroup_id() {
            0 => matches!(self.opts.scope, Scope::All),
            id => self
                .scope
                .lock()
                .map(|mut s| s.contains(id))
                .unwrap_or(false),
        }
    }

    fn mode(&self, mode: u16) -> u16 {
        mode & !self.opts.umask
    }

    fn attr(
        &self,
        node: Node,
        kind: FileType,
        mode: u16,
        owner: (u32, u32),
        time: SystemTime,
    ) -> FileAttr {
        FileAttr {
            ino: INodeNo(node.ino().unwrap_or(0)),
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: self.mode(mode),
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: owner.0,
            gid: owner.1,
            rdev: 0,
            blksize: 1024,
            flags: 0,
        }
    }

    fn boot_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.host.boot_epoch_ns)
    }

    fn proc_time(&self, p: &Process) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.host.boot_epoch_ns + p.start_boottime)
    }

    /// procfs's owner of a node of process `p` (of its thread `tid`): the effective uid and
    /// gid for a world-readable directory, and for anything else the same unless the process
    /// is not dumpable, then root (`task_dump_owner`). Asked of the kernel at each stat, from
    /// the directory or from `status`, which follows the second rule: a setuid or capset
    /// changes them with no event and between two reads of the threads, and the table has no
    /// dumpability. (The process is the table's, looked up just before: its pid cannot have
    /// been reused since without an exit the table would have applied.) A table of another
    /// host's pids (a test's) answers with its own ids.
    fn owner(&self, p: &Process, tid: Option<u32>, open_dir: bool) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt as _;
        let mut path = match tid {
            Some(t) => format!("/proc/{}/task/{t}", p.pid),
            None => format!("/proc/{}", p.pid),
        };
        if !open_dir {
            path.push_str("/status");
        }
        let kernel = self
            .table
            .of_this_host()
            .then(|| std::fs::metadata(path).ok())
            .flatten();
        match kernel {
            Some(m) => (m.uid(), m.gid()),
            None => p
                .leader()
                .map(|t| (t.euid, t.egid))
                .unwrap_or((p.euid, p.egid)),
        }
    }

    /// The owner of a process's node (`e`, or its directory) in this mount's personality.
    fn node_owner(&self, p: &Process, tid: Option<u32>, e: Option<&Entry>) -> (u32, u32) {
        let open_dir = e.is_none_or(|e| {
            e.mode == 0o555 && matches!(e.kind, Kind::TaskDir | Kind::KernelDir(_))
        });
        self.desc
            .owner
            .map_or_else(|| self.owner(p, tid, open_dir), |owner| owner(p, e))
    }

    fn entry_attr(&self, node: Node, e: &Entry, p: &Process, tid: Option<u32>) -> FileAttr {
        let kind = match e.kind {
            Kind::File(_) | Kind::Control(_) => FileType::RegularFile,
            Kind::KernelLink(_) | Kind::BsdLink(_) => FileType::Symlink,
            Kind::TaskDir | Kind::FdDir | Kind::KernelDir(_) => FileType::Directory,
        };
        self.attr(
            node,
            kind,
            e.mode,
            self.node_owner(p, tid, Some(e)),
            self.proc_time(p),
        )
    }

    fn global_attr(&self, gl: &Global, i: u16) -> FileAttr {
        let kind = match gl.kind {
            GlobalKind::Dir => FileType::Directory,
            GlobalKind::KernelFile(_) | GlobalKind::CallerFile(_) => FileType::RegularFile,
            GlobalKind::SelfLink | GlobalKind::ThreadSelfLink | GlobalKind::Link(_) => {
                FileType::Symlink
            }
        };
        // A host-wide file's mode is the kernel's (sysctls are 0644, some 0400): the row's is
        // the fallback for a kernel without it.
        let mode = match gl.kind {
            GlobalKind::KernelFile(path) => {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::metadata(Path::new("/proc").join(path))
                    .map_or(gl.mode, |m| (m.permissions().mode() & 0o7777) as u16)
            }
            _ => gl.mode,
        };
        self.attr(Node::Global(i), kind, mode, (0, 0), self.boot_time())
    }

    fn getattr_node(&self, req: &Asker, node: Node) -> Result<FileAttr, Errno> {
        match node {
            Node::Root => Ok(self.attr(node, FileType::Directory, 0o555, (0, 0), self.boot_time())),
            Node::Global(i) => match self.globals().get(i as usize) {
                Some(gl) => Ok(self.global_attr(gl, i)),
                None => Err(Errno::ENOENT),
            },
            Node::ProcDir(pid) => {
                let (_, p) = self.process(pid)?;
                Ok(self.attr(
                    node,
                    FileType::Directory,
                    0o555,
                    self.node_owner(&p, None, None),
                    self.proc_time(&p),
                ))
            }
            Node::ProcFile(pid, i) => {
                let (_, p) = self.process(pid)?;
                let e = self.files_table().get(i as usize).ok_or(Errno::ENOENT)?;
                let mut attr = self.entry_attr(node, e, &p, None);
                if let Some(mode) = self.qnx_mode(node, &p) {
                    attr.perm = self.mode(mode);
                }
                Ok(attr)
            }
            Node::ThreadDir(pid, tid) => {
                let p = self.with_thread(pid, tid)?;
                Ok(self.attr(
                    node,
                    FileType::Directory,
                    0o555,
                    self.owner(&p, Some(tid), true),
                    self.proc_time(&p),
                ))
            }
            Node::ThreadFile(pid, tid, i) => {
                let p = self.with_thread(pid, tid)?;
                let e = thread_files().get(i as usize).ok_or(Errno::ENOENT)?;
                Ok(self.entry_attr(node, e, &p, Some(tid)))
            }
            Node::Fd(pid, fd) => {
                use std::os::unix::fs::PermissionsExt as _;
                let (_, p) = self.process(pid)?;
                // The link's mode is the file's open mode (0500 read, 0300 write, 0700 both).
                let link = std::fs::symlink_metadata(format!("/proc/{pid}/fd/{fd}"))
                    .map_err(|_| Errno::ENOENT)?;
                Ok(self.attr(
                    node,
                    FileType::Symlink,
                    (link.permissions().mode() & 0o7777) as u16,
                    self.owner(&p, None, false),
                    self.proc_time(&p),
                ))
            }
            Node::PidFile(pid) => self.svr4_attr(pid),
            Node::Kernel(id) => self.kernel_attr(req, node, id),
        }
    }

    fn lookup_node(&self, req: &Asker, parent: Node, name: &OsStr) -> Result<Node, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        match parent {
            Node::Root if self.desc.pid_files => self.svr4_lookup(name),
            Node::Root => {
                if let Some(i) = global_child(self.globals(), None, name) {
                    return Ok(Node::Global(i));
                }
                if let Ok(pid) = parse_id(name) {
                    self.process(pid)?;
                    return Ok(Node::ProcDir(pid));
                }
                self.kernel_root(req, name)
            }
            Node::Global(i) => match global_child(self.globals(), Some(i), name) {
                Some(c) => Ok(Node::Global(c)),
                None => self.kernel_root(req, &format!("{}/{name}", self.global_path(i))),
            },
            Node::Kernel(id) => {
                let path = self.kernel_path(id)?;
                self.kernel_node(req, path.child(name))
            }
            Node::ProcDir(pid) => {
                self.process(pid)?;
                entry_index(self.files_table(), name)
                    .filter(|&i| self.serves(&self.files_table()[i as usize]))
                    .map(|i| Node::ProcFile(pid, i))
                    .ok_or(Errno::ENOENT)
            }
            Node::ProcFile(pid, i) => match self.files_table().get(i as usize).map(|e| e.kind) {
                Some(Kind::TaskDir) => {
                    let tid = parse_id(name)?;
                    self.with_thread(pid, tid)?;
                    Ok(Node::ThreadDir(pid, tid))
                }
                Some(Kind::FdDir) => {
                    let fd = parse_fd(name)?;
                    self.process(pid)?;
                    Ok(Node::Fd(pid, fd))
                }
                Some(Kind::KernelDir(dir)) => {
                    let path = self.kpath(pid, dir.to_string())?;
                    self.kernel_node(req, path.child(name))
                }
                _ => Err(Errno::ENOTDIR),
            },
            Node::ThreadDir(pid, tid) => entry_index(thread_files(), name)
                .map(|i| Node::ThreadFile(pid, tid, i))
                .ok_or(Errno::ENOENT),
            Node::ThreadFile(pid, tid, i) => match thread_files().get(i as usize).map(|e| e.kind) {
                Some(Kind::KernelDir(dir)) => {
                    let path = self.kpath(pid, format!("task/{tid}/{dir}"))?;
                    self.kernel_node(req, path.child(name))
                }
                _ => Err(Errno::ENOTDIR),
            },
            Node::Fd(..) | Node::PidFile(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Whether `name` can name nothing in `parent` whichever process the directory is of: a
    /// process's or thread's directory holds a fixed set of names, so the kernel may keep a
    /// miss as long as a name instead of asking again at every probe (the kernel keeps a plain
    /// ENOENT for an open, but a `stat` of `ctty`, which Linux never had, asks each time).
    fn never_holds(&self, parent: Node, name: &OsStr) -> bool {
        let Some(name) = name.to_str() else {
            return true;
        };
        match parent {
            Node::ProcDir(_) => entry_index(self.files_table(), name)
                .is_none_or(|i| !self.serves(&self.files_table()[i as usize])),
            Node::ThreadDir(..) => entry_index(thread_files(), name).is_none(),
            _ => false,
        }
    }

    /// The thread-group id of the calling thread (FUSE reports the thread).
    fn caller_tgid(&self, tid: u32) -> Result<u32, Errno> {
        let snap = self.snapshot()?;
        if let Some(p) = snap
            .processes
            .iter()
            .find(|p| p.pid == tid || p.tasks.iter().any(|t| t.tid == tid))
        {
            return Ok(p.pid);
        }
        // A thread born after the last refresh: the kernel knows its group.
        let status =
            std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|_| Errno::ENOENT)?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(Errno::ENOENT)
    }

    fn readlink_node(&self, req: &Asker, node: Node) -> Result<Vec<u8>, Errno> {
        match node {
            Node::Global(i) => match self.globals().get(i as usize).map(|g| g.kind) {
                Some(GlobalKind::SelfLink) => {
                    Ok(self.caller_tgid(req.pid())?.to_string().into_bytes())
                }
                Some(GlobalKind::ThreadSelfLink) => {
                    let tgid = self.caller_tgid(req.pid())?;
                    Ok(format!("{tgid}/task/{}", req.pid()).into_bytes())
                }
                Some(GlobalKind::Link(t)) => Ok(t.as_bytes().to_vec()),
                _ => Err(Errno::EINVAL),
            },
            Node::ProcFile(pid, i) => match self.files_table().get(i as usize).map(|e| e.kind) {
                Some(Kind::KernelLink(name)) => {
                    let (_, p) = self.process(pid)?;
                    may_read(req, pid)?;
                    kernel_link(&p, name)
                }
                Some(Kind::BsdLink(link)) => {
                    let (_, p) = self.process(pid)?;
                    let caller = self.caller_tgid(req.pid()).unwrap_or(req.pid());
                    super::bsd::readlink(&p, req.uid(), caller, link)
                }
                _ => Err(Errno::EINVAL),
            },
            Node::Fd(pid, fd) => {
                let (_, p) = self.process(pid)?;
                may_read(req, pid)?;
                kernel_link(&p, &format!("fd/{fd}"))
            }
            Node::Kernel(id) => {
                let path = self.kernel_path(id)?;
                self.kernel_guard(req, &path)?;
                let target =
                    std::fs::read_link(path.host()).map_err(|e| errno(&ViewError::Io(e)))?;
                self.kernel_same(&path)?;
                Ok(target.as_os_str().as_bytes().to_vec())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn render(&self, req: &Asker, node: Node) -> Result<Vec<u8>, Errno> {
        match node {
            Node::Global(i) => match self.globals().get(i as usize).map(|g| g.kind) {
                Some(GlobalKind::KernelFile(path)) => {
                    let path = KPath {
                        pid: 0,
                        start: 0,
                        rel: path.to_string(),
                    };
                    let host = path.host();
                    self.in_ns(req, &path, || read_kernel(&host))
                        .map_err(|e| errno(&ViewError::Io(e)))
                }
                Some(GlobalKind::CallerFile(name)) => {
                    let caller = self.caller_tgid(req.pid())?;
                    read_kernel(Path::new(&format!("/proc/{caller}/{name}")))
                        .map_err(|e| errno(&ViewError::Io(e)))
                }
                _ => Err(Errno::EISDIR),
            },
            Node::ProcFile(pid, i) => {
                let e = self.files_table().get(i as usize).ok_or(Errno::ENOENT)?;
                match e.kind {
                    Kind::File(show) => {
                        let p = reader_running(self.process_for(pid, show)?, req.pid());
                        self.show(&p, None, show)
                    }
                    _ => Err(Errno::EISDIR),
                }
            }
            Node::ThreadFile(pid, tid, i) => {
                let e = thread_files().get(i as usize).ok_or(Errno::ENOENT)?;
                match e.kind {
                    Kind::File(show) => {
                        let p = reader_running(self.process_for(pid, show)?, req.pid());
                        self.show(&p, Some(tid), show)
                    }
                    _ => Err(Errno::EISDIR),
                }
            }
            Node::Kernel(id) => {
                let path = self.kernel_path(id)?;
                self.kernel_guard(req, &path)?;
                let host = path.host();
                let read = self.in_ns(req, &path, || read_kernel(&host));
                self.kernel_same(&path)?;
                read.map_err(|e| errno(&ViewError::Kernel(e)))
            }
            _ => Err(Errno::EISDIR),
        }
    }

    /// Process `pid` if it has thread `tid`: one started since its numbers were read is
    /// looked for again in the kernel's list now, as threads have no event of their own.
    fn with_thread(&self, pid: u32, tid: u32) -> Result<Arc<Process>, Errno> {
        let has = |p: &Process| p.tasks.iter().any(|t| t.tid == tid);
        let (_, p) = self.process(pid)?;
        if has(&p) {
            return Ok(p);
        }
        let (_, p) = self.process_now(pid)?;
        if has(&p) { Ok(p) } else { Err(Errno::ENOENT) }
    }

    /// The process a file is rendered from: read now for a file rendered from the table; a
    /// file served from the kernel's own needs only the process's identity.
    fn process_for(&self, pid: u32, show: Show) -> Result<Arc<Process>, Errno> {
        let (_, p) = match show.bytes {
            Bytes::Render(_) => self.process_now(pid)?,
            Bytes::Kernel(_) => self.process(pid)?,
        };
        Ok(p)
    }

    /// A file's bytes, by its row.
    fn show(&self, p: &Process, tid: Option<u32>, show: Show) -> Result<Vec<u8>, Errno> {
        show.read(&Ctx { host: &self.host }, p, tid)
            .map_err(|e| errno(&e))
    }

    fn dir_entries(&self, req: &Asker, node: Node) -> Result<Vec<DirEnt>, Errno> {
        let dir = |ino: u64| DirEnt {
            ino,
            kind: FileType::Directory,
            name: Vec::new(),
        };
        let mut out = vec![
            DirEnt {
                name: b".".to_vec(),
                ..dir(node.ino().unwrap_or(1))
            },
            DirEnt {
                name: b"..".to_vec(),
                ..dir(1)
            },
        ];
        let push_table = |out: &mut Vec<DirEnt>, table: &[Entry], mk: &dyn Fn(u16) -> Node| {
            for (i, e) in table.iter().enumerate().filter(|(_, e)| self.serves(e)) {
                out.push(DirEnt {
                    ino: mk(i as u16).ino().unwrap_or(0),
                    kind: match e.kind {
                        Kind::File(_) | Kind::Control(_) => FileType::RegularFile,
                        Kind::KernelLink(_) | Kind::BsdLink(_) => FileType::Symlink,
                        _ => FileType::Directory,
                    },
                    name: e.name.as_bytes().to_vec(),
                });
            }
        };
        match node {
            Node::Root | Node::Global(_) => {
                let parent = match node {
                    Node::Global(i) => Some(i),
                    _ => None,
                };
                for (i, gl) in global_children(self.globals(), parent) {
                    out.push(DirEnt {
                        ino: Node::Global(i).ino().unwrap_or(0),
                        kind: self.global_attr(gl, i).kind,
                        name: gl.name.as_bytes().to_vec(),
                    });
                }
                if self.kernel_root_shown() {
                    // The kernel's entries the table has no row for, after the rows.
                    let dir = match parent {
                        Some(i) => self.global_path(i),
                        None => String::new(),
                    };
                    let have: Vec<Vec<u8>> = out.iter().map(|e| e.name.clone()).collect();
                    let path = KPath {
                        pid: 0,
                        start: 0,
                        rel: dir,
                    };
                    for e in self.kernel_list(req, &path)? {
                        let numeric = e.name.iter().all(u8::is_ascii_digit);
                        if !(parent.is_none() && numeric) && !have.contains(&e.name) {
                            out.push(e);
                        }
                    }
                }
                if parent.is_none() && self.desc.pid_files {
                    self.svr4_listing(&mut out)?;
                } else if parent.is_none() {
                    let snap = self.snapshot()?;
                    for p in snap.processes.iter().filter(|p| self.visible(p)) {
                        if let Some(ino) = Node::ProcDir(p.pid).ino() {
                            out.push(DirEnt {
                                ino,
                                kind: FileType::Directory,
                                name: p.pid.to_string().into_bytes(),
                            });
                        }
                    }
                }
            }
            Node::ProcDir(pid) => {
                self.process(pid)?;
                push_table(&mut out, self.files_table(), &|i| Node::ProcFile(pid, i));
            }
            Node::ThreadDir(pid, tid) => {
                push_table(&mut out, thread_files(), &|i| Node::ThreadFile(pid, tid, i));
            }
            Node::ProcFile(pid, i) => match self.files_table().get(i as usize).map(|e| e.kind) {
                Some(Kind::TaskDir) => {
                    // Threads come and go without an event: the list is the kernel's now.
                    let (_, p) = self.process_now(pid)?;
                    for t in p.tasks.iter() {
                        out.push(DirEnt {
                            ino: Node::ThreadDir(pid, t.tid).ino().unwrap_or(0),
                            kind: FileType::Directory,
                            name: t.tid.to_string().into_bytes(),
                        });
                    }
                }
                Some(Kind::FdDir) => {
                    let (_, p) = self.process(pid)?;
                    for fd in kernel_fds(&p)? {
                        if let Some(ino) = Node::Fd(pid, fd).ino() {
                            out.push(DirEnt {
                                ino,
                                kind: FileType::Symlink,
                                name: fd.to_string().into_bytes(),
                            });
                        }
                    }
                }
                Some(Kind::KernelDir(dir)) => {
                    let path = self.kpath(pid, dir.to_string())?;
                    out.extend(self.kernel_list(req, &path)?);
                }
                _ => return Err(Errno::ENOTDIR),
            },
            Node::ThreadFile(pid, tid, i) => match thread_files().get(i as usize).map(|e| e.kind) {
                Some(Kind::KernelDir(dir)) => {
                    let path = self.kpath(pid, format!("task/{tid}/{dir}"))?;
                    out.extend(self.kernel_list(req, &path)?);
                }
                _ => return Err(Errno::ENOTDIR),
            },
            Node::Kernel(id) => {
                let path = self.kernel_path(id)?;
                out.extend(self.kernel_list(req, &path)?);
            }
            Node::Fd(..) | Node::PidFile(_) => {
                return Err(Errno::ENOTDIR);
            }
        }
        Ok(out)
    }

    /// Opens a control file: the process must exist in this view, and the opener is
    /// remembered, since every operation is checked against the caller's own rights.
    fn open_control(&self, req: &Asker, pid: u32, ctl: ControlFile) -> Result<Handle, Errno> {
        self.process(pid)?;
        if self.control.is_none() {
            return Err(Errno::EOPNOTSUPP);
        }
        let caller = Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: self.caller_tgid(req.pid()).unwrap_or(req.pid()),
        };
        Ok(Handle::Control { pid, ctl, caller })
    }

    /// This mount's per-process table.
    fn files_table(&self) -> &'static [Entry] {
        self.desc.files_shown(&self.opts)
    }

    /// This mount's root nodes besides the pid directories (self, stat, meminfo, curproc, …).
    fn globals(&self) -> &'static [Global] {
        self.desc.root_shown(&self.opts)
    }

    /// Whether the caller may do `mask` to `node`, decided as the kernel's mode check would
    /// (fs/access.rs). Root reading or writing needs no attributes, so costs nothing.
    fn allow(&self, req: &Asker, node: Node, mask: u16) -> Result<(), Errno> {
        if req.uid() == 0 && mask & EXEC == 0 {
            return Ok(());
        }
        Self::allow_attr(req, &self.getattr_node(req, node)?, mask)
    }

    /// `allow` for a node whose attributes are already at hand.
    fn allow_attr(req: &Asker, attr: &FileAttr, mask: u16) -> Result<(), Errno> {
        let who = Who {
            uid: req.uid(),
            gid: req.gid(),
        };
        access::check(who, attr, mask, || access::groups_of(req.pid()))
    }

    /// Whether `fh` was opened from an agent this one took the connection over from: its
    /// rendering or listing went with it, and is made again.
    fn inherited(&self, fh: u64) -> bool {
        fh != 0 && fh < self.first_fh
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Remembers the open file `fh` until its release.
    fn keep(&self, fh: u64, handle: Handle) {
        if let Ok(mut files) = self.files.lock() {
            files.insert(fh, handle);
        }
    }

    /// The open file `fh`, if it is one of ours.
    fn handle(&self, fh: FileHandle) -> Option<Handle> {
        self.files.lock().ok().and_then(|f| f.get(&fh.0).cloned())
    }
}

fn parse_id(name: &str) -> Result<u32, Errno> {
    // Canonical decimal only: "007" is not a pid directory on Linux.
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::ENOENT);
    }
    name.parse().map_err(|_| Errno::ENOENT)
}

fn may_read(req: &Asker, pid: u32) -> Result<(), Errno> {
    let caller = Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: 0,
    };
    crate::control::may_read(&caller, pid).map_err(|e| Errno::from_i32(e.errno()))
}

fn parse_fd(name: &str) -> Result<u32, Errno> {
    if name == "0" {
        return Ok(0);
    }
    parse_id(name)
}

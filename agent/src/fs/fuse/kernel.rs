//! What the view serves from the kernel's own /proc beyond the table's rows: the subtrees
//! (`/PID/fdinfo/…`, `/PID/net/…`, the root's `sys/…`) through the kernel-node table, with
//! procfs's access rules, and the adjustments that make a rendering read as procfs's would.

use super::*;

impl ProcFs {
    /// Whether the root serves the kernel's entries it has no row for (Linux, unless
    /// `nolinux` hides the host-wide nodes).
    pub(super) fn kernel_root_shown(&self) -> bool {
        self.desc.kernel_root && !self.opts.nolinux
    }

    /// The path under /proc of a root table's node (`sys/kernel`).
    pub(super) fn global_path(&self, mut i: u16) -> String {
        let table = self.globals();
        let mut parts = Vec::new();
        while let Some(gl) = table.get(i as usize) {
            parts.push(gl.name);
            match gl.parent {
                Some(p) => i = p,
                None => break,
            }
        }
        parts.reverse();
        parts.join("/")
    }

    /// A root entry served from the kernel's /proc, if the kernel has it.
    pub(super) fn kernel_root(&self, req: &Asker, rel: &str) -> Result<Node, Errno> {
        if !self.kernel_root_shown() {
            return Err(Errno::ENOENT);
        }
        self.kernel_node(
            req,
            KPath {
                pid: 0,
                start: 0,
                rel: rel.to_string(),
            },
        )
    }

    /// `rel` under process `pid`'s directory, tied to its start time.
    pub(super) fn kpath(&self, pid: u32, rel: String) -> Result<KPath, Errno> {
        let (_, p) = self.process(pid)?;
        Ok(KPath {
            pid,
            start: p.start_boottime,
            rel,
        })
    }

    /// The node of `path`, if the kernel has it.
    pub(super) fn kernel_node(&self, req: &Asker, path: KPath) -> Result<Node, Errno> {
        let host = path.host();
        self.in_ns(req, &path, || std::fs::symlink_metadata(&host))
            .map_err(|_| Errno::ENOENT)?;
        Ok(Node::Kernel(self.kernel.id(path)))
    }

    /// Runs `f`, which reaches the kernel's file at `path`, in the namespaces procfs would
    /// answer it for (`sys/net/…`, `sys/kernel/hostname`, `sysvipc/…`: `ns::keyed`): the
    /// caller's network, UTS and IPC namespaces, or in a scoped view the scope's. On a
    /// thread of its own only when those are not the agent's.
    pub(super) fn in_ns<T: Send>(
        &self,
        req: &Asker,
        path: &KPath,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        if path.pid != 0 || !ns::keyed(&path.rel) {
            return f();
        }
        match self.ns_owner(req) {
            Some(pid) if !ns::shares_mine(pid).unwrap_or(true) => ns::run_in(pid, f),
            _ => f(),
        }
    }

    /// The path of kernel node `id`, whose process (if it has one) is still the same.
    pub(super) fn kernel_path(&self, id: u64) -> Result<Arc<KPath>, Errno> {
        let path = self.kernel.path(id).ok_or(Errno::ENOENT)?;
        if path.pid != 0 {
            let (_, p) = self.process(path.pid)?;
            if p.start_boottime != path.start {
                return Err(Errno::ENOENT);
            }
        }
        Ok(path)
    }

    /// After a read of `path`: its process is still the one the node was made for.
    /// The kernel's word is enough: the node carries the start time, so the table need not be
    /// asked again.
    pub(super) fn kernel_same(&self, path: &KPath) -> Result<(), Errno> {
        if path.pid == 0 {
            return Ok(());
        }
        same_start(path.pid, path.start).map_err(|e| errno(&e))
    }

    /// procfs's rules on top of the modes: a ptrace-read check for the subtrees it guards so
    /// (`fdinfo`, `ns`, `fd`, …), and CAP_SYS_ADMIN (here: root) for `map_files`.
    pub(super) fn kernel_guard(&self, req: &Asker, path: &KPath) -> Result<(), Errno> {
        if path.pid == 0 {
            return Ok(());
        }
        let mut parts = path.rel.split('/');
        let mut top = parts.next().unwrap_or_default();
        if top == "task" {
            top = parts.nth(1).unwrap_or_default();
        }
        if top == "map_files" && req.uid() != 0 {
            return Err(Errno::EPERM);
        }
        if PTRACE_READ.contains(&top) {
            may_read(req, path.pid)?;
        }
        Ok(())
    }

    /// The kernel's file a write to `node` goes to: the same file of the same process or
    /// thread, or of the root. `None` for a node the kernel has no writable twin of: a
    /// directory, a control file, a personality's own file.
    pub(super) fn write_target(&self, node: Node) -> Result<Option<KPath>, Errno> {
        if !self.desc.kernel_root {
            return Ok(None);
        }
        let file = |e: Option<&Entry>| {
            e.filter(|e| matches!(e.kind, Kind::File(_)))
                .map(|e| e.name)
        };
        Ok(match node {
            Node::Global(i) => match self.globals().get(i as usize).map(|g| g.kind) {
                Some(GlobalKind::KernelFile(path)) => Some(KPath {
                    pid: 0,
                    start: 0,
                    rel: path.to_string(),
                }),
                _ => None,
            },
            Node::ProcFile(pid, i) => match file(self.files_table().get(i as usize)) {
                Some(name) => Some(self.kpath(pid, name.to_string())?),
                None => None,
            },
            Node::ThreadFile(pid, tid, i) => match file(thread_files().get(i as usize)) {
                Some(name) => Some(self.kpath(pid, format!("task/{tid}/{name}"))?),
                None => None,
            },
            Node::Kernel(id) => Some((*self.kernel_path(id)?).clone()),
            _ => None,
        })
    }

    /// Opens the kernel's file at `path` for writing as the writer `req` (`privs::run_as`):
    /// the kernel checks the writer's rights, procfs's rules on top of the modes too.
    pub(super) fn open_through(&self, req: &Asker, path: &KPath) -> Result<std::fs::File, Errno> {
        self.kernel_guard(req, path)?;
        let creds = self.creds_of(req)?;
        let host = path.host();
        let file = self
            .in_ns(req, path, || {
                privs::run_as(&creds, || {
                    std::fs::OpenOptions::new().write(true).open(&host)
                })
            })
            .map_err(|e| errno(&ViewError::Io(e)))?;
        // A pid reused between the lookup and the open would have been opened: not a write
        // to make.
        self.kernel_same(path)?;
        Ok(file)
    }

    /// The credentials a write of `req` is made with.
    pub(super) fn creds_of(&self, req: &Asker) -> Result<privs::Creds, Errno> {
        privs::Creds::of_thread(req.pid(), req.uid(), req.gid())
            .map_err(|e| errno(&ViewError::Io(e)))
    }

    /// Whose namespaces the host-wide files are answered for: the caller's, as procfs does;
    /// in a scoped view the scope's, whoever reads: `pid=N`'s while it lives, otherwise (and
    /// for `cgroup=`) those of the scope's oldest live process, a container's init.
    pub(super) fn ns_owner(&self, req: &Asker) -> Option<u32> {
        match self.opts.scope {
            Scope::All => return Some(req.pid()),
            Scope::CgroupOf(pid) if self.process(pid).is_ok() => return Some(pid),
            _ => {}
        }
        let snap = self.snapshot().ok()?;
        snap.processes
            .iter()
            .filter(|p| p.exit.is_none() && self.visible(p))
            .min_by_key(|p| p.start_boottime)
            .map(|p| p.pid)
    }

    pub(super) fn kernel_attr(&self, req: &Asker, node: Node, id: u64) -> Result<FileAttr, Errno> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.kernel_path(id)?;
        let host = path.host();
        let md = self
            .in_ns(req, &path, || std::fs::symlink_metadata(&host))
            .map_err(|e| errno(&ViewError::Io(e)))?;
        let time = if path.pid == 0 {
            self.boot_time()
        } else {
            UNIX_EPOCH + Duration::from_nanos(self.host.boot_epoch_ns + path.start)
        };
        Ok(self.attr(
            node,
            file_type(&md.file_type()),
            (md.mode() & 0o7777) as u16,
            (md.uid(), md.gid()),
            time,
        ))
    }

    /// The entries of a kernel directory, as nodes of the kernel tree.
    pub(super) fn kernel_list(&self, req: &Asker, path: &KPath) -> Result<Vec<DirEnt>, Errno> {
        let host = path.host();
        let entries = self
            .in_ns(req, path, || {
                // An entry gone between the listing and its type (a pid at the root) is left
                // out, as the next listing would.
                Ok(std::fs::read_dir(&host)?
                    .flatten()
                    .filter_map(|e| Some((e.file_name(), e.file_type().ok()?)))
                    .collect::<Vec<_>>())
            })
            .map_err(|e| errno(&ViewError::Io(e)))?;
        let mut out = Vec::new();
        for (name, kind) in entries {
            let Ok(name) = name.into_string() else {
                continue;
            };
            let ino = Node::Kernel(self.kernel.id(path.child(&name)))
                .ino()
                .unwrap_or(0);
            out.push(DirEnt {
                ino,
                kind: file_type(&kind),
                name: name.into_bytes(),
            });
        }
        self.kernel_same(path)?;
        Ok(out)
    }
}

/// A process reading its own files is running as procfs renders them (the reading thread is
/// `R` there), but blocked in its FUSE read by the time the agent reads its threads: the
/// reading thread's record is made a running one, as procfs would show it.
pub(super) fn reader_running(p: Arc<Process>, reader: u32) -> Arc<Process> {
    const TASK_RUNNING: u32 = 0;
    if !p
        .tasks
        .iter()
        .any(|t| t.tid == reader && t.state != TASK_RUNNING)
    {
        return p;
    }
    let mut mine = Process::clone(&p);
    let mut tasks = mine.tasks.to_vec();
    for t in tasks.iter_mut().filter(|t| t.tid == reader) {
        t.state = TASK_RUNNING;
    }
    mine.tasks = crate::table::Tasks::new(&tasks);
    Arc::new(mine)
}

pub(super) fn file_type(t: &std::fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

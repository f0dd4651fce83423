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
    pub(super) fn kernel_root(&self, rel: &str) -> Result<Node, Errno> {
        if !self.kernel_root_shown() {
            return Err(Errno::ENOENT);
        }
        self.kernel_node(KPath {
            pid: 0,
            start: 0,
            rel: rel.to_string(),
        })
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
    pub(super) fn kernel_node(&self, path: KPath) -> Result<Node, Errno> {
        std::fs::symlink_metadata(path.host()).map_err(|_| Errno::ENOENT)?;
        Ok(Node::Kernel(self.kernel.id(path)))
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

    pub(super) fn kernel_attr(&self, node: Node, id: u64) -> Result<FileAttr, Errno> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.kernel_path(id)?;
        let md = std::fs::symlink_metadata(path.host()).map_err(|e| errno(&ViewError::Io(e)))?;
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
    pub(super) fn kernel_list(&self, path: &KPath) -> Result<Vec<DirEnt>, Errno> {
        let rd = std::fs::read_dir(path.host()).map_err(|e| errno(&ViewError::Io(e)))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(kind) = e.file_type() else { continue };
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
    for t in mine.tasks.iter_mut().filter(|t| t.tid == reader) {
        t.state = TASK_RUNNING;
    }
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

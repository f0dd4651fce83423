//! The transport-neutral FUSE operations (`do_*`): what the fuser adapter (adapter.rs) and the
//! io_uring queues (uring.rs) both call, each a request's whole meaning over the node semantics
//! of fuse.rs.

use super::*;

/// What a LOOKUP found.
pub enum Found {
    Node(FileAttr),
    /// Nothing, and nothing can ever be there (`never_holds`): the kernel may keep the miss.
    Never,
}

/// What an OPEN made.
pub enum Opened {
    /// A control file's handle, kept.
    Handle(u64),
    /// A file's contents, rendered now; the transport keeps them (or backs them with a memfd).
    Rendered(Vec<u8>),
    /// One of the kernel's own files, open for writing through (and kept).
    Through(u64),
}

/// How a rendered file is opened: DIRECT_IO, so the size 0 that getattr reports never
/// truncates a read; NOFLUSH, since nothing is ever written, so close(2) need not wait for a
/// FLUSH round trip.
pub const RENDERED_OPEN: FopenFlags = FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_NOFLUSH);
/// How a file backed by a memfd is opened: no DIRECT_IO, which would override passthrough and
/// send READs after all.
pub const BACKED_OPEN: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// The operations, whichever transport brought the request: fuser's adapter (adapter.rs), or the
/// io_uring queues of fuse/uring.rs.
impl ProcFs {
    pub(super) fn do_lookup(&self, req: &Asker, parent: u64, name: &OsStr) -> Result<Found, Errno> {
        let result = Node::from_ino(parent)
            .ok_or(Errno::ENOENT)
            .and_then(|p| self.allow(req, p, EXEC).map(|()| p))
            .and_then(|p| self.lookup_node(req, p, name))
            .and_then(|n| {
                self.getattr_node(req, n)
                    .map(|a| self.with_contents(req, n, a))
            });
        match result {
            Ok(attr) => Ok(Found::Node(attr)),
            Err(Errno::ENOENT)
                if Node::from_ino(parent).is_some_and(|p| self.never_holds(p, name)) =>
            {
                Ok(Found::Never)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn do_getattr(&self, req: &Asker, ino: u64) -> Result<FileAttr, Errno> {
        Node::from_ino(ino).ok_or(Errno::ENOENT).and_then(|n| {
            self.getattr_node(req, n)
                .map(|a| self.with_contents(req, n, a))
        })
    }

    /// SETATTR. A size or times, as `open(O_TRUNC)` (`echo stop > ctl`, `fopen("w")`) and
    /// `touch` set them, change nothing and succeed for a caller who may write the file, as
    /// procfs's `proc_setattr` does (`echo 5 > /proc/PID/oom_score_adj` works there): the
    /// view's files are the process, not bytes to cut. A caller who may not write gets EACCES,
    /// as `truncate` on a read-only procfs file does. Modes and owners are the process's and
    /// stay so (EPERM), but for QNX's chmod of `as` and `ctl`.
    pub(super) fn do_setattr(
        &self,
        req: &Asker,
        ino: u64,
        mode: Option<u32>,
        owner_change: bool,
    ) -> Result<FileAttr, Errno> {
        let node = Node::from_ino(ino).ok_or(Errno::ENOENT)?;
        if owner_change {
            return Err(Errno::EPERM);
        }
        if let Some(mode) = mode {
            // (The kernel has already checked that the caller owns the file or is root.)
            return self.qnx_chmod(req, node, mode).unwrap_or(Err(Errno::EPERM));
        }
        self.allow(req, node, WRITE)?;
        self.do_getattr(req, ino)
    }

    /// What making a file or directory gets: ENOENT in the Linux view, as procfs's lookups
    /// fail before any create (`touch /proc/x`, `mkdir /proc/1/x`); EACCES in the others'.
    pub(super) fn no_create(&self) -> Errno {
        if self.desc.kernel_root {
            Errno::ENOENT
        } else {
            Errno::EACCES
        }
    }

    /// What a rename gets: EPERM, but ENOENT in the Linux view when the new name is not
    /// there, as procfs's lookup of it fails first.
    pub(super) fn no_rename(&self, req: &Asker, new_parent: u64, new_name: &OsStr) -> Errno {
        let there =
            Node::from_ino(new_parent).is_some_and(|p| self.lookup_node(req, p, new_name).is_ok());
        if self.desc.kernel_root && !there {
            Errno::ENOENT
        } else {
            Errno::EPERM
        }
    }

    pub(super) fn do_access(&self, req: &Asker, ino: u64, mask: u32) -> Result<(), Errno> {
        let want = (mask & 0o7) as u16;
        Node::from_ino(ino)
            .ok_or(Errno::ENOENT)
            .and_then(|n| self.getattr_node(req, n))
            .and_then(|attr| Self::allow_attr(req, &attr, want))
    }

    pub(super) fn do_readlink(&self, req: &Asker, ino: u64) -> Result<Vec<u8>, Errno> {
        Node::from_ino(ino)
            .ok_or(Errno::ENOENT)
            .and_then(|n| self.readlink_node(req, n))
    }

    pub(super) fn do_open(&self, req: &Asker, ino: u64, flags: OpenFlags) -> Result<Opened, Errno> {
        let node = Node::from_ino(ino).ok_or(Errno::ENOENT)?;
        if self.opts.cache.is_some() {
            // FUSE_NO_OPEN_SUPPORT: the kernel opens this mount's files itself from now on, and
            // reads go through its page cache (attributes carry sizes; see with_contents).
            return Err(Errno::ENOSYS);
        }
        self.allow(req, node, access::open_mask(flags.acc_mode()))?;
        let control = match node {
            // SVR4: the process file is its address space, as `mem`.
            Node::PidFile(pid) => Some((pid, ControlFile::Mem)),
            Node::ProcFile(pid, i) => match self.files_table().get(i as usize).map(|e| e.kind) {
                Some(Kind::Control(ctl)) => Some((pid, ctl)),
                _ => None,
            },
            _ => None,
        };
        if let Some((pid, ctl)) = control {
            let fh = self.new_fh();
            let handle = self.open_control(req, pid, ctl)?;
            self.qnx_open(node, flags, fh, &handle)?;
            self.keep(fh, handle);
            return Ok(Opened::Handle(fh));
        }
        // Besides control files, only the kernel's own files take writes: they go to the
        // kernel's file, which checks the writer.
        let through = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => None,
            _ => {
                let path = self.write_target(node)?.ok_or(Errno::EACCES)?;
                Some(Arc::new(Mutex::new(self.open_through(req, &path)?)))
            }
        };
        let keep_through = |bytes: Option<Vec<u8>>, file| {
            let fh = self.new_fh();
            let bytes = bytes.map(Arc::new);
            self.keep(fh, Handle::Through { file, bytes });
            Opened::Through(fh)
        };
        if let (Some(file), OpenAccMode::O_WRONLY) = (&through, flags.acc_mode()) {
            return Ok(keep_through(None, file.clone()));
        }
        if let Node::ProcFile(pid, i) = node
            && let Some(Kind::File(show)) = self.files_table().get(i as usize).map(|e| e.kind)
            && show.ptrace_read
        {
            may_read(req, pid)?;
        }
        let bytes = self.render(req, node)?;
        Ok(match through {
            Some(file) => keep_through(Some(bytes), file),
            None => Opened::Rendered(bytes),
        })
    }

    /// A WRITE to one of the kernel's own files: written to it with the writer's credentials
    /// at that moment (procfs checks some rights at the write, `oom_score_adj`'s
    /// CAP_SYS_RESOURCE). A mount without opens (`cache=`) writes with no handle: the file
    /// is opened for this write.
    pub(super) fn do_write_through(
        &self,
        req: &Asker,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<usize, Errno> {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let file = match self.handle(FileHandle(fh)) {
            Some(Handle::Through { file, .. }) => file,
            None if fh == 0 => {
                let node = Node::from_ino(ino).ok_or(Errno::ENOENT)?;
                self.allow(req, node, WRITE)?;
                let path = self.write_target(node)?.ok_or(Errno::EACCES)?;
                Arc::new(Mutex::new(self.open_through(req, &path)?))
            }
            _ => return Err(Errno::EBADF),
        };
        let creds = self.creds_of(req)?;
        let mut file = file.lock().map_err(|_| Errno::EIO)?;
        let file: &mut std::fs::File = &mut file;
        privs::run_as(&creds, move || {
            // procfs's seq files take no pwrite(2); they do seek, and a write at a position
            // means what it means there (sysctls ignore or reject one past 0).
            file.seek(SeekFrom::Start(offset))?;
            file.write(data)
        })
        .map_err(|e| errno(&ViewError::Io(e)))
    }

    /// A new handle for a rendering: backed by a memfd the kernel reads itself on a
    /// `passthrough` mount (with the backing's id to open it with), otherwise kept for READs.
    pub(super) fn open_rendered(
        &self,
        ino: u64,
        bytes: Vec<u8>,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<passthrough::Id>,
    ) -> Result<(u64, Option<Arc<passthrough::Id>>), Errno> {
        let fh = self.new_fh();
        if self.opts.passthrough {
            if let Some(id) = self.passthrough.back(register, ino, &bytes) {
                self.keep(fh, Handle::Backed { ino });
                return Ok((fh, Some(id)));
            }
            if self.passthrough.backed(ino) {
                // The kernel would refuse any other kind of open of this inode now.
                return Err(Errno::EIO);
            }
        }
        self.keep(fh, Handle::Bytes(Arc::new(bytes)));
        Ok((fh, None))
    }

    /// The rendering a READ of handle `fh` is served from. A handle opened from the agent
    /// this one took over from is rendered again for the reader (checked as an open is).
    pub(super) fn rendering(&self, req: &Asker, ino: u64, fh: u64) -> Result<Arc<Vec<u8>>, Errno> {
        match self.handle(FileHandle(fh)) {
            Some(
                Handle::Bytes(bytes)
                | Handle::Through {
                    bytes: Some(bytes), ..
                },
            ) => Ok(bytes),
            Some(Handle::Through { bytes: None, .. }) => Err(Errno::EBADF),
            // A backed handle the kernel reads from its memfd and never asks for; a control
            // handle is read through the control layer.
            Some(_) => Err(Errno::EIO),
            None if self.inherited(fh) => {
                match self.do_open(req, ino, OpenFlags(libc::O_RDONLY))? {
                    Opened::Rendered(bytes) => Ok(Arc::new(bytes)),
                    Opened::Handle(fh) | Opened::Through(fh) => {
                        self.do_release(fh);
                        Err(Errno::EBADF)
                    }
                }
            }
            None => Err(Errno::EBADF),
        }
    }

    pub(super) fn do_release(&self, fh: u64) {
        let handle = self.files.lock().ok().and_then(|mut f| f.remove(&fh));
        if let Some(Handle::Backed { ino, .. }) = handle {
            self.passthrough.closed(ino);
        }
        self.qnx_release(fh);
    }

    /// The listing is taken once, at opendir, so a reader walking it in several calls sees one
    /// consistent directory.
    pub(super) fn do_opendir(&self, req: &Asker, ino: u64) -> Result<u64, Errno> {
        self.asked();
        let list = Node::from_ino(ino)
            .ok_or(Errno::ENOENT)
            .and_then(|n| self.allow(req, n, READ).map(|()| n))
            .and_then(|n| {
                // fd/ is 0500, but a non-dumpable process's is root's in procfs; the kernel's
                // own guarded directories (fdinfo/, ns/, map_files/) likewise.
                match n {
                    Node::ProcFile(pid, i) => {
                        match self.files_table().get(i as usize).map(|e| e.kind) {
                            Some(Kind::FdDir) => may_read(req, pid)?,
                            Some(Kind::KernelDir(dir)) => {
                                self.kernel_guard(req, &self.kpath(pid, dir.to_string())?)?;
                            }
                            _ => {}
                        }
                    }
                    Node::Kernel(id) => self.kernel_guard(req, &*self.kernel_path(id)?)?,
                    _ => {}
                }
                Ok(n)
            })
            .and_then(|n| self.dir_entries(req, n))?;
        let fh = self.new_fh();
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.insert(fh, Arc::new(list));
        }
        Ok(fh)
    }

    /// The listing a READDIR of handle `fh` is served from; one opened from the agent this
    /// one took over from is listed again, and kept under that handle until its release.
    pub(super) fn listing(
        &self,
        req: &Asker,
        ino: u64,
        fh: u64,
    ) -> Result<Arc<Vec<DirEnt>>, Errno> {
        let kept = self.dirs.lock().ok().and_then(|d| d.get(&fh).cloned());
        match kept {
            Some(list) => Ok(list),
            None if self.inherited(fh) => {
                let again = self.do_opendir(req, ino)?;
                let list = self.dirs.lock().ok().and_then(|mut d| {
                    let list = d.remove(&again)?;
                    d.insert(fh, list.clone());
                    Some(list)
                });
                list.ok_or(Errno::EBADF)
            }
            None => Err(Errno::EBADF),
        }
    }

    pub(super) fn do_releasedir(&self, fh: u64) {
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.remove(&fh);
        }
    }
}

//! The fuser adapter: each `Filesystem` method decodes fuser's request, calls the core
//! operation (`ProcFs::do_*`, shared with the io_uring queues of uring.rs), and encodes the
//! reply. Nothing here decides what a file is or who may read it.

use super::*;
use crate::fs::{Op, count_request, personality::Ioctls};

impl Filesystem for ProcFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.opts.passthrough {
            self.passthrough.negotiate(config);
        }
        if self.opts.cache.is_some()
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
        {
            // Without it cached pages would outlive the bound: refuse to mount.
            tracing::error!(?missing, "the kernel cannot invalidate cached FUSE data");
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        count_request(Op::Lookup);
        match self.do_lookup(&Asker::from(req), parent.0, name) {
            Ok(Found::Node(attr)) => {
                reply.entry_with_ttls(&self.attr_ttl(), &self.entry_ttl(), &attr, Generation(0))
            }
            Ok(Found::Never) => {
                // Inode 0: the kernel keeps the miss as long as a name.
                let none = self.attr(Node::Root, FileType::RegularFile, 0, (0, 0), UNIX_EPOCH);
                let none = FileAttr {
                    ino: INodeNo(0),
                    ..none
                };
                let ttl = self.entry_ttl();
                reply.entry_with_ttls(&ttl, &ttl, &none, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        count_request(Op::Getattr);
        match self.do_getattr(&Asker::from(req), ino.0) {
            Ok(attr) => reply.attr(&self.attr_ttl(), &attr),
            Err(e) => reply.error(e),
        }
    }

    /// access(2) and chdir(2): without default_permissions the kernel asks; the answer is the
    /// one open(2) would give.
    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        count_request(Op::Access);
        match self.do_access(&Asker::from(req), ino.0, mask.bits() as u32) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        count_request(Op::Readlink);
        match self.do_readlink(&Asker::from(req), ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        count_request(Op::Open);
        match self.do_open(&Asker::from(req), ino.0, flags) {
            Ok(Opened::Handle(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Ok(Opened::Through(fh)) => reply.opened(FileHandle(fh), RENDERED_OPEN),
            Ok(Opened::Rendered(bytes)) => {
                let register =
                    |f: &std::fs::File| reply.open_backing(f).map(passthrough::Id::Fuser);
                match self.open_rendered(ino.0, bytes, register) {
                    Ok((fh, Some(id))) => {
                        if let passthrough::Id::Fuser(id) = &*id {
                            reply.opened_passthrough(FileHandle(fh), BACKED_OPEN, id);
                        }
                    }
                    Ok((fh, None)) => reply.opened(FileHandle(fh), RENDERED_OPEN),
                    Err(e) => reply.error(e),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        count_request(Op::Read);
        let req = &Asker::from(req);
        if fh.0 == 0 {
            return match self.cached_read(req, ino.0) {
                Ok(bytes) => reply.data(window(&bytes, offset, size)),
                Err(e) => reply.error(e),
            };
        }
        match self.handle(fh) {
            Some(Handle::Control { .. }) => match self.control_io(fh.0) {
                // Control reads can block (wait, a stopped target): off the FUSE threads.
                Some(Ok(io)) => io.read(offset, size, move |data| match data {
                    Ok(data) => reply.data(&data),
                    Err(e) => reply.error(e),
                }),
                Some(Err(e)) => reply.error(e),
                None => reply.error(Errno::EBADF),
            },
            // Renderings, and what the io_uring queues answer the same way (ops.rs).
            _ => match self.rendering(req, ino.0, fh.0) {
                Ok(bytes) => reply.data(window(&bytes, offset, size)),
                Err(e) => reply.error(e),
            },
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        count_request(Op::Release);
        self.do_release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        count_request(Op::Flush);
        // Nothing is ever buffered: ENOSYS tells the kernel never to send FLUSH again (files
        // opened on a never-stale mount say FOPEN_NOFLUSH; a cache= mount's opens have no
        // flags to say it with).
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        count_request(Op::Opendir);
        match self.do_opendir(&Asker::from(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        count_request(Op::Readdir);
        let list = match self.listing(&Asker::from(req), ino.0, fh.0) {
            Ok(list) => list,
            Err(e) => return reply.error(e),
        };
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                (i + 1) as u64,
                e.kind,
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        count_request(Op::Releasedir);
        self.do_releasedir(fh.0);
        reply.ok();
    }

    // Nothing can be created (`no_create`), removed, renamed or changed (EPERM): the view is
    // the kernel's process table, not a place to keep files.
    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.no_create());
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.no_create());
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.no_create());
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(self.no_create());
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.no_rename(&Asker::from(req), newparent.0, newname));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        count_request(Op::Setattr);
        match self.do_setattr(
            &Asker::from(req),
            ino.0,
            mode,
            uid.is_some() || gid.is_some(),
        ) {
            Ok(attr) => reply.attr(&self.attr_ttl(), &attr),
            Err(e) => reply.error(e),
        }
    }

    /// The personalities' control requests: SVR4's PFC* on a process file, QNX's devctls on
    /// `ctl`. FUSE forwards only requests whose code encodes the argument's size and
    /// direction (it copies the argument in and out by those); every one here does.
    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        count_request(Op::Ioctl);
        let req = &Asker::from(req);
        match self.desc.ioctls {
            Ioctls::Svr4 => self.svr4_ioctl(req, fh, cmd, in_data, reply),
            Ioctls::Qnx => self.qnx_ioctl(req, fh, cmd, in_data, reply),
            _ => reply.error(Errno::ENOTTY),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        count_request(Op::Write);
        match self.control_io(fh.0) {
            // Commands like waitstop block until the target stops: off the FUSE threads.
            Some(Ok(io)) => io.write(offset, data.to_vec(), move |n| match n {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(e),
            }),
            Some(Err(e)) => reply.error(e),
            None => match self.do_write_through(&Asker::from(req), ino.0, fh.0, offset, data) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(e),
            },
        }
    }
}

/// A fuser session over `conn`, a connection another agent mounted and initialised. fuser
/// only starts a session with the INIT handshake, which the kernel sends once per connection
/// and never again; so the handshake is made on a connection of our own, mounted at `scratch`
/// for that, and the session's descriptor is then pointed at `conn` (dup3 over the same
/// number, before any of its threads read): fuser reads and answers `conn` from then on,
/// with the flags the same kernel agreed to for the same options. The scratch connection's
/// only descriptor is gone with the dup3, so it ends, and its mount is detached.
pub fn adopt(
    fs: ProcFs,
    conn: std::os::fd::OwnedFd,
    scratch: &Path,
    config: fuser::Config,
) -> std::io::Result<fuser::Session<ProcFs>> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(scratch)?;
    let result = (|| {
        let own = fusewire::mount(scratch, "bpfproc", "bpfproc", false, false)?;
        let number = own.as_raw_fd();
        let session = fuser::Session::from_fd(fs, own, config.acl, config)?;
        // libc, not nix: nix's dup3 wants the target as an OwnedFd, and the session owns it.
        // SAFETY: `number` is the session's descriptor; dup3 replaces the file behind it
        // atomically, and nothing reads it until the session is spawned.
        if unsafe { libc::dup3(conn.as_raw_fd(), number, libc::O_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(session)
    })();
    let _ = fusewire::unmount(scratch);
    let _ = std::fs::remove_dir(scratch);
    result
}

//! `-o uring`: the view served over FUSE-over-io_uring (Linux >= 6.14) instead of fuser's
//! /dev/fuse threads. The kernel keeps one queue per CPU and hands a request to the queue of
//! the CPU that made it; each queue is a thread pinned to that CPU, so a round trip needs no
//! cross-CPU wake-up, which on small VMs costs more than everything else in it (BENCHMARKS.md
//! measures the transports side by side).
//!
//! fuser does not speak this transport and keeps its request decoding private, so the wire
//! protocol and the queues are the `fusewire` crate's, and this module maps its requests onto
//! the operations the fuser adapter calls too (`ProcFs::do_*`), with `-o passthrough` as well.
//! Control files' reads and writes, which can wait (a `wait` read, `waitstop`), are carried
//! out on tokio's blocking pool as the fuser adapter's are, and answered from there
//! (`fusewire::Later`): the queue answers its CPU's other requests meanwhile. It serves what
//! a never-stale view needs but the SVR4 and QNX ioctls; the option parser refuses the rest.

use std::{
    ffi::OsStr,
    os::{fd::OwnedFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{SystemTime, UNIX_EPOCH},
};

use fuser::{Errno, FileAttr, FileType, OpenFlags};
use fusewire::{Attr, Deferred, Header, Later, Out, init, op, u32_at, u64_at, window};

use super::{
    Asker, BACKED_OPEN, Found, Opened, ProcFs, RENDERED_OPEN, control_io::ControlIo, passthrough,
};
use crate::fs::{Op, count_request};

/// Requests carried by the io_uring queues, for /v1/stats (tests check the transport is used).
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn mode_bits(kind: FileType) -> u32 {
    match kind {
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Socket => libc::S_IFSOCK,
        FileType::RegularFile => libc::S_IFREG,
    }
}

fn wire_attr(a: &FileAttr) -> Attr {
    let t = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()))
    };
    Attr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.blocks,
        atime: t(a.atime),
        mtime: t(a.mtime),
        ctime: t(a.ctime),
        mode: mode_bits(a.kind) | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
    }
}

/// A mount's connection: the view, and the /dev/fuse descriptor its passthrough backings are
/// registered on.
struct Conn {
    fs: ProcFs,
    fd: Arc<OwnedFd>,
    /// Whether the kernel agreed to FUSE_OVER_IO_URING, once INIT is answered.
    agreed: Mutex<Option<bool>>,
}

impl fusewire::Server for Conn {
    fn answer(
        &self,
        h: &Header,
        op: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
        later: Later<'_>,
    ) -> Option<i32> {
        let fs = &self.fs;
        let asker = Asker::new(h.uid, h.gid, h.pid);
        let result: Result<(), Errno> = match h.opcode {
            op::INIT => {
                self.init(op, out);
                Ok(())
            }
            op::LOOKUP => {
                count_request(Op::Lookup);
                let name = payload.split(|&c| c == 0).next().unwrap_or_default();
                fs.do_lookup(&asker, h.nodeid, OsStr::from_bytes(name))
                    .map(|found| {
                        let attr = match found {
                            Found::Node(attr) => wire_attr(&attr),
                            // Inode 0: the kernel keeps the miss as long as a name.
                            Found::Never => Attr::default(),
                        };
                        Out(out).entry(&attr, fs.entry_ttl(), fs.attr_ttl());
                    })
            }
            op::GETATTR => {
                count_request(Op::Getattr);
                fs.do_getattr(&asker, h.nodeid).map(|attr| {
                    Out(out).attr_out(&wire_attr(&attr), fs.attr_ttl());
                })
            }
            op::ACCESS => {
                count_request(Op::Access);
                fs.do_access(&asker, h.nodeid, u32_at(op, 0))
            }
            op::READLINK => {
                count_request(Op::Readlink);
                fs.do_readlink(&asker, h.nodeid)
                    .map(|target| out.extend_from_slice(&target))
            }
            op::OPEN => {
                count_request(Op::Open);
                self.open(&asker, h.nodeid, OpenFlags(u32_at(op, 0) as i32), out)
            }
            op::READ => {
                count_request(Op::Read);
                let (fh, offset) = (u64_at(op, 0), u64_at(op, 8));
                let size = u32_at(op, 16).min(fusewire::MAX_PAYLOAD as u32);
                match fs.rendering(&asker, h.nodeid, fh) {
                    Ok(bytes) => {
                        out.extend_from_slice(window(&bytes, offset, size));
                        Ok(())
                    }
                    // A handle without a rendering: a control file's, perhaps.
                    Err(Errno::EIO) => match fs.control_io(fh) {
                        Some(io) => {
                            return offload(io, later, |io, answer| {
                                io.read(offset, size, move |data| match data {
                                    Ok(data) => answer.reply(0, &data),
                                    Err(e) => answer.reply(-i32::from(e), &[]),
                                });
                            });
                        }
                        None => Err(Errno::EIO),
                    },
                    Err(e) => Err(e),
                }
            }
            op::WRITE => {
                count_request(Op::Write);
                // fuse_write_in: fh, offset, size, ...; the data follows it.
                let (fh, offset) = (u64_at(op, 0), u64_at(op, 8));
                let data = &payload[..(u32_at(op, 16) as usize).min(payload.len())];
                // fuse_write_out: size, padding.
                let written = |out: &mut Vec<u8>, n: usize| {
                    Out(out).u32(n as u32).u32(0);
                };
                if let Some(io) = fs.control_io(fh) {
                    return offload(io, later, |io, answer| {
                        io.write(offset, data.to_vec(), move |n| match n {
                            Ok(n) => {
                                let mut out = Vec::with_capacity(8);
                                written(&mut out, n);
                                answer.reply(0, &out);
                            }
                            Err(e) => answer.reply(-i32::from(e), &[]),
                        });
                    });
                }
                fs.do_write_through(&asker, h.nodeid, fh, offset, data)
                    .map(|n| written(out, n))
            }
            op::RELEASE => {
                count_request(Op::Release);
                fs.do_release(u64_at(op, 0));
                Ok(())
            }
            op::OPENDIR => {
                count_request(Op::Opendir);
                fs.do_opendir(&asker, h.nodeid).map(|fh| {
                    Out(out).open(fh, 0, 0);
                })
            }
            op::READDIR => {
                count_request(Op::Readdir);
                fs.listing(&asker, h.nodeid, u64_at(op, 0)).map(|list| {
                    let (offset, size) = (u64_at(op, 8) as usize, u32_at(op, 16));
                    for (i, e) in list.iter().enumerate().skip(offset) {
                        let dtype = mode_bits(e.kind) >> 12;
                        if !Out(out).dirent(size, e.ino, i as u64 + 1, dtype, &e.name) {
                            break;
                        }
                    }
                })
            }
            op::RELEASEDIR => {
                count_request(Op::Releasedir);
                fs.do_releasedir(u64_at(op, 0));
                Ok(())
            }
            op::STATFS => {
                // As fuser's default.
                Out(out).statfs(512, 255);
                Ok(())
            }
            op::FLUSH => {
                count_request(Op::Flush);
                // Nothing is ever buffered: the kernel stops sending FLUSH.
                Err(Errno::ENOSYS)
            }
            // Nothing can be created (`no_create`), removed, renamed or changed (EPERM), as on
            // the fuser adapter.
            op::MKNOD | op::MKDIR | op::SYMLINK | op::CREATE => Err(fs.no_create()),
            op::LINK => Err(Errno::EPERM),
            op::UNLINK | op::RMDIR => Err(Errno::EPERM),
            op::RENAME | op::RENAME2 => {
                // fuse_rename_in (8 bytes) or fuse_rename2_in (16): newdir first; then the
                // old name and the new, each NUL-terminated.
                let new_name = payload.split(|&c| c == 0).nth(1).unwrap_or_default();
                Err(fs.no_rename(&asker, u64_at(op, 0), OsStr::from_bytes(new_name)))
            }
            op::SETATTR => {
                count_request(Op::Setattr);
                // fuse_setattr_in: valid, padding, fh, size, lock_owner, atime, mtime, ctime,
                // their three nsecs, then mode at 68.
                let valid = u32_at(op, 0);
                let mode = (valid & fusewire::FATTR_MODE != 0).then(|| u32_at(op, 68));
                let owner = valid & (fusewire::FATTR_UID | fusewire::FATTR_GID) != 0;
                fs.do_setattr(&asker, h.nodeid, mode, owner).map(|attr| {
                    Out(out).attr_out(&wire_attr(&attr), fs.attr_ttl());
                })
            }
            op::IOCTL => Err(Errno::ENOTTY),
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => return None,
            op::DESTROY => Ok(()),
            _ => Err(Errno::ENOSYS),
        };
        Some(result.map_or_else(|e| -i32::from(e), |()| 0))
    }

    fn initialised(&self) -> Option<bool> {
        *self.agreed.lock().ok()?
    }

    fn carried(&self) {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
    }
}

impl Conn {
    fn init(&self, op: &[u8], out: &mut Vec<u8>) {
        let mut wanted = init::ASYNC_READ
            | init::BIG_WRITES
            | init::PARALLEL_DIROPS
            | init::MAX_PAGES
            | init::INIT_EXT
            | init::OVER_IO_URING;
        if self.fs.opts.passthrough {
            wanted |= init::PASSTHROUGH;
        }
        let agreed = fusewire::init_reply(op, wanted, out);
        self.fs
            .passthrough
            .negotiated(agreed & init::PASSTHROUGH != 0);
        if let Ok(mut a) = self.agreed.lock() {
            *a = Some(agreed & init::OVER_IO_URING != 0);
        }
    }

    fn open(
        &self,
        asker: &Asker,
        ino: u64,
        flags: OpenFlags,
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let fs = &self.fs;
        let bytes = match fs.do_open(asker, ino, flags)? {
            Opened::Rendered(bytes) => bytes,
            Opened::Through(fh) => {
                Out(out).open(fh, RENDERED_OPEN.bits(), 0);
                return Ok(());
            }
            // A control file: read and written through its handle, never cached.
            Opened::Handle(fh) => {
                Out(out).open(fh, fusewire::FOPEN_DIRECT_IO, 0);
                return Ok(());
            }
        };
        let register = |f: &std::fs::File| passthrough::register(&self.fd, f);
        match fs.open_rendered(ino, bytes, register)? {
            (fh, Some(id)) => {
                let backing = match &*id {
                    passthrough::Id::Dev { id, .. } => *id,
                    passthrough::Id::Fuser(_) => 0,
                };
                Out(out).open(
                    fh,
                    BACKED_OPEN.bits() | fusewire::FOPEN_PASSTHROUGH,
                    backing,
                );
            }
            (fh, None) => {
                Out(out).open(fh, RENDERED_OPEN.bits(), 0);
            }
        }
        Ok(())
    }
}

/// Hands a control handle's READ or WRITE to the control layer (`start`), which answers it
/// when done while the queue answers others. EAGAIN when the queue already has as many
/// answers waiting as it may (`fusewire::PARKED`), so that waiting ones never starve it.
fn offload(
    io: Result<ControlIo, Errno>,
    later: Later<'_>,
    start: impl FnOnce(ControlIo, Deferred),
) -> Option<i32> {
    match io.and_then(|io| later.defer().map(|d| (io, d)).ok_or(Errno::EAGAIN)) {
        Ok((io, answer)) => {
            start(io, answer);
            None
        }
        Err(e) => Some(-i32::from(e)),
    }
}

/// A mounted view on the io_uring transport.
pub struct Session {
    dir: PathBuf,
    threads: Vec<JoinHandle<()>>,
}

impl Session {
    /// Mounts `fs` at `dir` and returns once requests take the io_uring queues.
    pub fn mount(
        fs: ProcFs,
        dir: &Path,
        allow_other: bool,
        read_only: bool,
    ) -> std::io::Result<Self> {
        fusewire::enable_uring()?;
        let fd = Arc::new(fusewire::mount(
            dir,
            "bpfproc",
            "bpfproc",
            allow_other,
            read_only,
        )?);
        let conn = Arc::new(Conn {
            fs,
            fd: fd.clone(),
            agreed: Mutex::new(None),
        });
        match fusewire::serve(fd, conn, 1, true) {
            Ok(threads) => Ok(Self {
                dir: dir.to_owned(),
                threads,
            }),
            Err(e) => {
                // The threads end with the connection.
                let _ = fusewire::unmount(dir);
                Err(e)
            }
        }
    }

    /// Whether the connection has ended: its /dev/fuse thread, the first, returns then.
    pub fn is_finished(&self) -> bool {
        self.threads.first().is_none_or(JoinHandle::is_finished)
    }

    /// Detaches the mount and waits for its threads, which end with the connection: at once,
    /// unless another mount namespace still holds the view (the caller's watchdog aborts it).
    pub fn umount_and_join(self) -> std::io::Result<()> {
        let result = fusewire::unmount(&self.dir);
        for t in self.threads {
            let _ = t.join();
        }
        result
    }
}

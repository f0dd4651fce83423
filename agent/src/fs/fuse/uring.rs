//! `-o uring`: the view served over FUSE-over-io_uring (Linux >= 6.14) instead of fuser's
//! /dev/fuse threads. The kernel keeps one queue per CPU and hands a request to the queue of
//! the CPU that made it; each queue here is a thread pinned to that CPU, so a round trip needs
//! no cross-CPU wake-up, which on small VMs costs more than everything else in it (BENCHMARKS.md
//! measures the two transports side by side).
//!
//! fuser does not speak this transport and keeps its request decoding private, so this module
//! mounts, answers INIT and decodes requests itself (the kernel's uapi: include/uapi/linux/fuse.h
//! and Documentation/filesystems/fuse/fuse-io-uring.rst), and calls the same operations as the
//! fuser adapter (`ProcFs::do_*`), with `-o passthrough` too. It serves what a never-stale view
//! without control files needs; the option parser refuses the rest.

use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fuser::{Errno, FileAttr, FileType, OpenFlags};

use super::{Asker, BACKED_OPEN, ENTRY_TTL, Found, Opened, ProcFs, RENDERED_OPEN, passthrough};
use crate::fs::{Op, count_request};

/// Requests carried by the io_uring queues, for /v1/stats (tests check the transport is used).
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

const ENABLE: &str = "/sys/module/fuse/parameters/enable_uring";

// Opcodes (enum fuse_opcode).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const ACCESS: u32 = 34;
const CREATE: u32 = 35;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const IOCTL: u32 = 39;
const BATCH_FORGET: u32 = 42;
const RENAME2: u32 = 45;

// INIT flags we take when offered.
const ASYNC_READ: u64 = 1;
const BIG_WRITES: u64 = 1 << 5;
const PARALLEL_DIROPS: u64 = 1 << 18;
const MAX_PAGES: u64 = 1 << 22;
const INIT_EXT: u64 = 1 << 30;
const PASSTHROUGH: u64 = 1 << 37;
const OVER_IO_URING: u64 = 1 << 41;
const FOPEN_PASSTHROUGH: u32 = 1 << 7;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// The largest reply: a READ of up to MAX_PAGES pages. It is also every entry's payload
/// buffer, which the kernel wants at least this large.
const MAX_PAYLOAD: usize = 128 * 1024;
/// struct fuse_uring_req_header: the in/out header, the per-op header, and
/// struct fuse_uring_ent_in_out.
const RING_HEADERS: usize = 128 + 128 + 32;
const RING_OP: usize = 128;
const RING_ENT: usize = 256;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Entries per queue: a queue serves the processes on one CPU, which make one synchronous
/// request at a time each; a second entry takes a background RELEASE meanwhile.
const ENTRIES: usize = 4;

/// The size of the op-specific struct that leads a request. Over io_uring the kernel puts it
/// in the ring header and the rest (a name, say) in the payload; over /dev/fuse, before the
/// queues are up, it is the prefix of the body.
fn op_header_size(opcode: u32) -> usize {
    match opcode {
        GETATTR => 16,
        OPEN | OPENDIR | FORGET | INTERRUPT | BATCH_FORGET | ACCESS | MKDIR => 8,
        READ | READDIR => 40,
        RELEASE | RELEASEDIR | FLUSH => 24,
        INIT => 64,
        MKNOD | CREATE => 16,
        RENAME => 8,
        RENAME2 => 16,
        SETATTR => 88,
        IOCTL => 32,
        _ => 0,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// struct fuse_in_header, the fields used.
#[derive(Clone, Copy)]
struct Header {
    opcode: u32,
    unique: u64,
    nodeid: u64,
    asker: Asker,
}

impl Header {
    fn parse(b: &[u8]) -> Self {
        Self {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
            asker: Asker {
                uid: u32_at(b, 24),
                gid: u32_at(b, 28),
                pid: u32_at(b, 32),
            },
        }
    }
}

/// A reply body in the kernel's C layout.
struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// struct fuse_attr.
    fn attr(&mut self, a: &FileAttr) -> &mut Self {
        let t = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()))
        };
        let (atime, mtime, ctime) = (t(a.atime), t(a.mtime), t(a.ctime));
        self.u64(a.ino.0).u64(a.size).u64(a.blocks);
        self.u64(atime.0).u64(mtime.0).u64(ctime.0);
        self.u32(atime.1).u32(mtime.1).u32(ctime.1);
        self.u32(mode_bits(a.kind) | u32::from(a.perm)).u32(a.nlink);
        self.u32(a.uid).u32(a.gid).u32(a.rdev).u32(a.blksize).u32(0)
    }

    /// struct fuse_entry_out: names kept for ENTRY_TTL, attributes for `attr_ttl`.
    fn entry(&mut self, a: &FileAttr, attr_ttl: Duration) -> &mut Self {
        self.u64(a.ino.0).u64(0);
        self.u64(ENTRY_TTL.as_secs()).u64(attr_ttl.as_secs());
        self.u32(ENTRY_TTL.subsec_nanos())
            .u32(attr_ttl.subsec_nanos());
        self.attr(a)
    }
}

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

/// The shared state of a mount's threads.
struct Conn {
    fs: ProcFs,
    /// Shared with the passthrough backings registered on it, which unregister through it.
    fd: Arc<OwnedFd>,
    initialised: AtomicBool,
    /// Whether the kernel agreed to FUSE_OVER_IO_URING in INIT.
    uring: AtomicBool,
}

impl Conn {
    /// Answers one request into `out` (the body only); `None` when the request takes no reply.
    fn answer(&self, h: &Header, op: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Option<i32> {
        let fs = &self.fs;
        let result: Result<(), Errno> = match h.opcode {
            INIT => {
                self.init(op, out);
                Ok(())
            }
            LOOKUP => {
                count_request(Op::Lookup);
                let name = payload.split(|&c| c == 0).next().unwrap_or_default();
                fs.do_lookup(&h.asker, h.nodeid, OsStr::from_bytes(name))
                    .map(|found| match found {
                        Found::Node(attr) => {
                            Out(out).entry(&attr, fs.attr_ttl());
                        }
                        Found::Never => {
                            // Inode 0: the kernel keeps the miss for ENTRY_TTL.
                            Out(out).u64(0).u64(0).u64(ENTRY_TTL.as_secs()).u64(0);
                            out.resize(out.len() + 8 + 88, 0);
                        }
                    })
            }
            GETATTR => {
                count_request(Op::Getattr);
                fs.do_getattr(&h.asker, h.nodeid).map(|attr| {
                    let ttl = fs.attr_ttl();
                    Out(out)
                        .u64(ttl.as_secs())
                        .u32(ttl.subsec_nanos())
                        .u32(0)
                        .attr(&attr);
                })
            }
            ACCESS => {
                count_request(Op::Access);
                fs.do_access(&h.asker, h.nodeid, u32_at(op, 0))
            }
            READLINK => {
                count_request(Op::Readlink);
                fs.do_readlink(&h.asker, h.nodeid)
                    .map(|target| out.extend_from_slice(&target))
            }
            OPEN => {
                count_request(Op::Open);
                let flags = OpenFlags(u32_at(op, 0) as i32);
                fs.do_open(&h.asker, h.nodeid, flags).and_then(|opened| {
                    let bytes = match opened {
                        Opened::Rendered(bytes) => bytes,
                        // `serves` keeps control files off these mounts.
                        Opened::Handle(fh) => {
                            fs.do_release(fh);
                            return Err(Errno::EACCES);
                        }
                    };
                    let register = |f: &std::fs::File| passthrough::register(&self.fd, f);
                    match fs.open_rendered(h.nodeid, bytes, register)? {
                        (fh, Some(id)) => {
                            let backing = match &*id {
                                passthrough::Id::Dev { id, .. } => *id,
                                passthrough::Id::Fuser(_) => 0,
                            };
                            let flags = BACKED_OPEN.bits() | FOPEN_PASSTHROUGH;
                            Out(out).u64(fh).u32(flags).u32(backing);
                        }
                        (fh, None) => {
                            Out(out).u64(fh).u32(RENDERED_OPEN.bits()).u32(0);
                        }
                    }
                    Ok(())
                })
            }
            READ => {
                count_request(Op::Read);
                let size = u32_at(op, 16).min(MAX_PAYLOAD as u32);
                fs.read_rendered(u64_at(op, 0), u64_at(op, 8), size)
                    .map(|data| out.extend_from_slice(&data))
            }
            RELEASE => {
                count_request(Op::Release);
                fs.do_release(u64_at(op, 0));
                Ok(())
            }
            OPENDIR => {
                count_request(Op::Opendir);
                fs.do_opendir(&h.asker, h.nodeid).map(|fh| {
                    Out(out).u64(fh).u32(0).u32(0);
                })
            }
            READDIR => {
                count_request(Op::Readdir);
                self.readdir(u64_at(op, 0), u64_at(op, 8), u32_at(op, 16), out)
            }
            RELEASEDIR => {
                count_request(Op::Releasedir);
                fs.do_releasedir(u64_at(op, 0));
                Ok(())
            }
            STATFS => {
                // As fuser's default: no blocks, 512-byte blocks, 255-byte names.
                Out(out).u64(0).u64(0).u64(0).u64(0).u64(0);
                Out(out).u32(512).u32(255).u32(0).u32(0);
                out.resize(80, 0);
                Ok(())
            }
            FLUSH => {
                count_request(Op::Flush);
                // Nothing is ever buffered: the kernel stops sending FLUSH.
                Err(Errno::ENOSYS)
            }
            // Nothing can be created (EACCES), removed, renamed or changed (EPERM), as on the
            // fuser adapter.
            MKNOD | MKDIR | SYMLINK | LINK | CREATE => Err(Errno::EACCES),
            UNLINK | RMDIR | RENAME | RENAME2 | SETATTR => Err(Errno::EPERM),
            IOCTL => Err(Errno::ENOTTY),
            FORGET | BATCH_FORGET | INTERRUPT => return None,
            DESTROY => Ok(()),
            _ => Err(Errno::ENOSYS),
        };
        Some(match result {
            Ok(()) => 0,
            Err(e) => {
                out.clear();
                -i32::from(e)
            }
        })
    }

    fn init(&self, op: &[u8], out: &mut Vec<u8>) {
        let minor = u32_at(op, 4);
        let offered = u64::from(u32_at(op, 12)) | (u64::from(u32_at(op, 16)) << 32);
        let mut wanted =
            ASYNC_READ | BIG_WRITES | PARALLEL_DIROPS | MAX_PAGES | INIT_EXT | OVER_IO_URING;
        if self.fs.opts.passthrough {
            wanted |= PASSTHROUGH;
        }
        let flags = offered & wanted;
        self.uring
            .store(flags & OVER_IO_URING != 0, Ordering::Release);
        self.fs.passthrough.negotiated(flags & PASSTHROUGH != 0);
        // struct fuse_init_out.
        let mut o = Out(out);
        o.u32(7).u32(minor.min(45)).u32(MAX_PAYLOAD as u32);
        o.u32(flags as u32).u16(16).u16(12).u32(MAX_PAYLOAD as u32);
        o.u32(1).u16((MAX_PAYLOAD / 4096) as u16).u16(0);
        // flags2, then max_stack_depth: a backing file may not itself be on a stacked fs.
        o.u32((flags >> 32) as u32).u32(1);
        out.resize(64, 0);
        self.initialised.store(true, Ordering::Release);
    }

    fn readdir(&self, fh: u64, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
        let list = self.fs.listing(fh)?;
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            // struct fuse_dirent, padded to 8 bytes.
            let len = (24 + e.name.len()).next_multiple_of(8);
            if out.len() + len > size as usize {
                break;
            }
            Out(out)
                .u64(e.ino)
                .u64(i as u64 + 1)
                .u32(e.name.len() as u32)
                .u32(mode_bits(e.kind) >> 12);
            out.extend_from_slice(&e.name);
            out.resize(out.len().next_multiple_of(8), 0);
        }
        Ok(())
    }

    /// The /dev/fuse side: INIT, then FORGET and INTERRUPT (which never take the queues), and
    /// whatever comes before the queues are up. Ends when the connection does.
    fn serve_dev(&self) {
        let fd = self.fd.as_raw_fd();
        let mut buf = vec![0u8; MAX_PAYLOAD + 4096];
        let mut out = Vec::with_capacity(MAX_PAYLOAD);
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    // Interrupted, or a request the kernel withdrew before it was read.
                    Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                    // ENODEV: the connection has ended.
                    _ => return,
                }
            }
            let request = &buf[..n as usize];
            let h = Header::parse(request);
            let body = request.get(IN_HEADER..).unwrap_or_default();
            let (op, payload) = body.split_at(op_header_size(h.opcode).min(body.len()));
            out.clear();
            let Some(error) = self.answer(&h, op, payload, &mut out) else {
                continue;
            };
            let header = reply_header(OUT_HEADER + out.len(), error, h.unique);
            let iov = [
                libc::iovec {
                    iov_base: header.as_ptr() as *mut _,
                    iov_len: OUT_HEADER,
                },
                libc::iovec {
                    iov_base: out.as_ptr() as *mut _,
                    iov_len: out.len(),
                },
            ];
            // SAFETY: both buffers outlive the call. A failed write is a request the kernel
            // already gave up on.
            unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        }
    }

    /// One CPU's queue: registers its entries, reports that, then answers requests until the
    /// connection ends.
    fn serve_queue(&self, qid: u16, registered: &mpsc::Sender<std::io::Result<()>>) {
        use io_uring::{IoUring, cqueue, squeue};
        pin_to(qid);
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(2 * ENTRIES as u32);
        let mut ring = match ring {
            Ok(r) => r,
            Err(e) => {
                let _ = registered.send(Err(e));
                return;
            }
        };
        let mut entries: Vec<RingEntry> = (0..ENTRIES).map(|_| RingEntry::new()).collect();
        let fd = self.fd.as_raw_fd();
        for (i, e) in entries.iter().enumerate() {
            let sqe = e.command(fd, CMD_REGISTER, qid, i, 0);
            // SAFETY: the entry's buffers and iovecs live as long as the ring (this function).
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                let _ = registered.send(Err(std::io::Error::other("io_uring queue full")));
                return;
            }
        }
        // A REGISTER that fails completes at once; one that works stays in flight until a
        // request comes for it.
        let failed = ring
            .submit()
            .map(|_| ring.completion().map(|c| c.result()).find(|&r| r < 0));
        match failed {
            Ok(None) => {
                let _ = registered.send(Ok(()));
            }
            Ok(Some(e)) => {
                let _ = registered.send(Err(std::io::Error::from_raw_os_error(-e)));
                return;
            }
            Err(e) => {
                let _ = registered.send(Err(e));
                return;
            }
        }
        let mut out = Vec::with_capacity(MAX_PAYLOAD);
        loop {
            if ring.submit_and_wait(1).is_err() {
                return;
            }
            let done: Vec<(usize, i32)> = ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect();
            for (i, result) in done {
                let Some(e) = entries.get_mut(i) else {
                    continue;
                };
                if result < 0 {
                    // ENOTCONN: the connection has ended.
                    return;
                }
                REQUESTS.fetch_add(1, Ordering::Relaxed);
                let commit_id = e.answer(self, &mut out);
                let sqe = e.command(fd, CMD_COMMIT_AND_FETCH, qid, i, commit_id);
                // SAFETY: as for REGISTER. There is room: each entry has at most one
                // command in flight and the queue holds twice as many.
                if unsafe { ring.submission().push(&sqe) }.is_err() {
                    return;
                }
            }
        }
    }
}

fn reply_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut b = [0; OUT_HEADER];
    b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&error.to_ne_bytes());
    b[8..16].copy_from_slice(&unique.to_ne_bytes());
    b
}

/// A ring entry's buffers: the kernel writes a request into them and reads the reply back.
struct RingEntry {
    headers: Box<[u8; RING_HEADERS]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the raw pointers in `iov` point into this entry's own heap buffers, which move
// with it and are only touched by the thread that owns it.
unsafe impl Send for RingEntry {}

impl RingEntry {
    fn new() -> Self {
        let mut headers = Box::new([0; RING_HEADERS]);
        let mut payload = vec![0; MAX_PAYLOAD];
        let iov = Box::new([
            libc::iovec {
                iov_base: headers.as_mut_ptr().cast(),
                iov_len: RING_HEADERS,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: MAX_PAYLOAD,
            },
        ]);
        Self {
            headers,
            payload,
            iov,
        }
    }

    /// An IORING_OP_URING_CMD carrying struct fuse_uring_cmd_req.
    fn command(
        &self,
        fd: i32,
        cmd: u32,
        qid: u16,
        index: usize,
        commit_id: u64,
    ) -> io_uring::squeue::Entry128 {
        let mut req = [0u8; 80];
        req[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        req[16..18].copy_from_slice(&qid.to_ne_bytes());
        let sqe = io_uring::opcode::UringCmd80::new(io_uring::types::Fd(fd), cmd)
            .cmd(req)
            .addr(Some(self.iov.as_ptr() as u64))
            .build()
            .user_data(index as u64);
        // SAFETY: Entry128 is repr(C) over the 128-byte SQE. The kernel wants the iovec count
        // in `len` (offset 24), which the crate has no setter for.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: the same bytes with one field set.
        unsafe { std::mem::transmute::<[u8; 128], io_uring::squeue::Entry128>(raw) }
    }

    /// Answers the request the kernel put in this entry, in place; returns its commit id.
    fn answer(&mut self, conn: &Conn, out: &mut Vec<u8>) -> u64 {
        let h = Header::parse(&self.headers[..IN_HEADER]);
        let commit_id = u64_at(&self.headers[..], RING_ENT + 8);
        let size = (u32_at(&self.headers[..], RING_ENT + 16) as usize).min(MAX_PAYLOAD);
        out.clear();
        let error = conn
            .answer(
                &h,
                &self.headers[RING_OP..RING_ENT],
                &self.payload[..size],
                out,
            )
            .unwrap_or(0);
        let len = out.len().min(MAX_PAYLOAD);
        self.payload[..len].copy_from_slice(&out[..len]);
        self.headers[..OUT_HEADER].copy_from_slice(&reply_header(
            OUT_HEADER + len,
            error,
            h.unique,
        ));
        self.headers[RING_ENT + 16..RING_ENT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
        commit_id
    }
}

fn pin_to(cpu: u16) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it below 1024 CPUs.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(usize::from(cpu), &mut set);
        // A possible CPU that is offline cannot be pinned to; its queue must exist anyway,
        // and serves unpinned.
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// How many CPUs the kernel may ever use: it wants a queue for each before it uses any.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let n: usize = text
        .trim()
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some(b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1)
        })
        .sum();
    n.max(1)
}

/// A mounted view on the io_uring transport.
pub struct Session {
    dir: PathBuf,
    threads: Vec<JoinHandle<()>>,
}

impl Session {
    /// Mounts `fs` at `dir` and returns once requests take the io_uring queues.
    pub fn mount(fs: ProcFs, dir: &Path, allow_other: bool) -> std::io::Result<Self> {
        enable()?;
        // SAFETY: a plain open; the descriptor is owned below.
        let raw = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: no arguments, cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let options = format!(
            "fd={raw},rootmode=40000,user_id={uid},group_id={gid}{}",
            if allow_other { ",allow_other" } else { "" }
        );
        let options = CString::new(options).map_err(std::io::Error::other)?;
        let target = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: NUL-terminated strings that outlive the call.
        let mounted = unsafe {
            libc::mount(
                c"bpfproc".as_ptr(),
                target.as_ptr(),
                c"fuse.bpfproc".as_ptr(),
                libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let conn = Arc::new(Conn {
            fs,
            fd: Arc::new(fd),
            initialised: AtomicBool::new(false),
            uring: AtomicBool::new(false),
        });
        let mut session = Self {
            dir: dir.to_owned(),
            threads: Vec::new(),
        };
        let dev = conn.clone();
        session.threads.push(
            std::thread::Builder::new()
                .name("fuse-dev".into())
                .spawn(move || dev.serve_dev())?,
        );
        match session.start_queues(&conn) {
            Ok(()) => Ok(session),
            Err(e) => {
                let _ = session.umount_and_join();
                Err(e)
            }
        }
    }

    fn start_queues(&mut self, conn: &Arc<Conn>) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !conn.initialised.load(Ordering::Acquire) {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the kernel sent no FUSE INIT",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !conn.uring.load(Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the kernel did not offer FUSE over io_uring for this mount",
            ));
        }
        let (tx, rx) = mpsc::channel();
        let queues = possible_cpus();
        for q in 0..queues {
            let (conn, tx) = (conn.clone(), tx.clone());
            self.threads.push(
                std::thread::Builder::new()
                    .name(format!("fuse-uring-{q}"))
                    .spawn(move || conn.serve_queue(q as u16, &tx))?,
            );
        }
        for _ in 0..queues {
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|_| std::io::Error::other("a FUSE io_uring queue did not register"))??;
        }
        Ok(())
    }

    /// Whether the connection has ended: its /dev/fuse thread, the first, returns then.
    pub fn is_finished(&self) -> bool {
        self.threads.first().is_none_or(JoinHandle::is_finished)
    }

    /// Detaches the mount and waits for its threads, which end with the connection: at once,
    /// unless another mount namespace still holds the view (the caller's watchdog aborts it).
    pub fn umount_and_join(self) -> std::io::Result<()> {
        let target =
            CString::new(self.dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: a NUL-terminated path.
        let detached = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let result = if detached == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        for t in self.threads {
            let _ = t.join();
        }
        result
    }
}

/// FUSE over io_uring is off until the fuse module's `enable_uring` is set. Only a connection
/// that asks for it in INIT gets it, and fuser's never ask, so the other mounts are unchanged.
fn enable() -> std::io::Result<()> {
    match std::fs::read_to_string(ENABLE) {
        Ok(v) if v.trim() == "Y" => Ok(()),
        Ok(_) => std::fs::write(ENABLE, "1"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux >= 6.14)",
        )),
        Err(e) => Err(e),
    }
}

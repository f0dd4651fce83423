//! The FUSE wire protocol and its two transports, for the servers that fuser cannot carry:
//! the agent's `-o uring` views (agent/src/fs/fuse/uring.rs) and the benchmarks' FUSE floor
//! (xtask/src/floor.rs).
//!
//! - The classic transport: threads read requests from /dev/fuse and write replies back.
//! - FUSE over io_uring (Linux >= 6.14): the kernel keeps one queue per CPU and hands a request
//!   to the queue of the CPU that made it. Each queue here is a thread pinned to that CPU, so a
//!   round trip needs no cross-CPU wake-up. INIT, FORGET and INTERRUPT still come over
//!   /dev/fuse.
//!
//! A server answers a request from the thread that brought it, or, when its answer would make
//! that thread wait (a read that waits for a child's exit), later from any thread
//! (`Later::defer`, `Deferred`): on /dev/fuse the reply is written whenever it comes; on
//! io_uring the request's ring entry stays out of the fetch cycle until its answer is handed
//! back to the queue's thread, which an eventfd polled in the same ring wakes for it.
//!
//! The layouts are the kernel's uapi (include/uapi/linux/fuse.h) and
//! Documentation/filesystems/fuse/fuse-io-uring.rst.

use std::{
    cell::Cell,
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Opcodes (enum fuse_opcode).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const BATCH_FORGET: u32 = 42;
    pub const RENAME2: u32 = 45;
}

/// INIT flags (the 64-bit set: flags | flags2 << 32).
pub mod init {
    pub const ASYNC_READ: u64 = 1;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_setattr_in.valid` bits.
pub const FATTR_MODE: u32 = 1;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;

/// Open flags of a reply (FOPEN_*).
pub const FOPEN_DIRECT_IO: u32 = 1;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// The largest reply: a READ of up to 32 pages. It is also every ring entry's payload buffer,
/// which the kernel wants at least this large.
pub const MAX_PAYLOAD: usize = 128 * 1024;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// struct fuse_uring_req_header: the in/out header, the per-op header, and
/// struct fuse_uring_ent_in_out.
const RING_HEADERS: usize = 128 + 128 + 32;
const RING_OP: usize = 128;
const RING_ENT: usize = 256;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Entries per queue: a queue serves the processes on one CPU, which make one synchronous
/// request at a time each; the others take background RELEASEs meanwhile, or wait with an
/// answer given later (`PARKED`). An entry's buffers are touched only as far as its requests
/// and replies reach, so an idle one costs address space, not memory.
const ENTRIES: usize = 8;
/// At most this many of a queue's entries wait for answers given later: the other
/// `ENTRIES - PARKED` (the 4 a queue had before answers could wait) keep serving its CPU, so
/// requests that wait can never starve it. `Later::defer` refuses beyond that.
pub const PARKED: usize = ENTRIES - 4;
/// The user_data of the queue's poll of its eventfd; entries' are their indexes.
const WAKE: u64 = u64::MAX;
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// The size of the op-specific struct that leads a request. Over io_uring the kernel puts it
/// in the ring header and the rest (a name, say) in the payload; over /dev/fuse it is the
/// prefix of the body.
fn op_header_size(opcode: u32) -> usize {
    use op::*;
    match opcode {
        GETATTR | MKNOD | CREATE | RENAME2 => 16,
        OPEN | OPENDIR | FORGET | INTERRUPT | BATCH_FORGET | ACCESS | MKDIR | RENAME | GETXATTR
        | LISTXATTR => 8,
        READ | READDIR | WRITE => 40,
        RELEASE | RELEASEDIR | FLUSH => 24,
        INIT => 64,
        SETATTR => 88,
        IOCTL => 32,
        _ => 0,
    }
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The part of `bytes` a READ at `offset` of `size` bytes returns.
pub fn window(bytes: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start.saturating_add(size as usize).min(bytes.len());
    &bytes[start..end]
}

/// struct fuse_in_header, the fields servers use.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    /// The calling thread.
    pub pid: u32,
}

impl Header {
    fn parse(b: &[u8]) -> Self {
        Self {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
            uid: u32_at(b, 24),
            gid: u32_at(b, 28),
            pid: u32_at(b, 32),
        }
    }
}

/// struct fuse_attr, in plain numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    /// (seconds, nanoseconds) since the epoch.
    pub atime: (u64, u32),
    pub mtime: (u64, u32),
    pub ctime: (u64, u32),
    /// File type and permission bits, as st_mode.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// A reply body in the kernel's C layout.
pub struct Out<'a>(pub &'a mut Vec<u8>);

impl Out<'_> {
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn attr(&mut self, a: &Attr) -> &mut Self {
        self.u64(a.ino).u64(a.size).u64(a.blocks);
        self.u64(a.atime.0).u64(a.mtime.0).u64(a.ctime.0);
        self.u32(a.atime.1).u32(a.mtime.1).u32(a.ctime.1);
        self.u32(a.mode).u32(a.nlink).u32(a.uid).u32(a.gid);
        self.u32(a.rdev).u32(a.blksize).u32(0)
    }

    /// struct fuse_entry_out; `a.ino` 0 is a miss the kernel keeps for `entry_ttl`.
    pub fn entry(&mut self, a: &Attr, entry_ttl: Duration, attr_ttl: Duration) -> &mut Self {
        self.u64(a.ino).u64(0);
        self.u64(entry_ttl.as_secs()).u64(attr_ttl.as_secs());
        self.u32(entry_ttl.subsec_nanos())
            .u32(attr_ttl.subsec_nanos());
        self.attr(a)
    }

    /// struct fuse_attr_out.
    pub fn attr_out(&mut self, a: &Attr, ttl: Duration) -> &mut Self {
        self.u64(ttl.as_secs())
            .u32(ttl.subsec_nanos())
            .u32(0)
            .attr(a)
    }

    /// struct fuse_open_out.
    pub fn open(&mut self, fh: u64, flags: u32, backing_id: u32) -> &mut Self {
        self.u64(fh).u32(flags).u32(backing_id)
    }

    /// One struct fuse_dirent, padded to 8 bytes, if it fits in `size`; false when it does not.
    pub fn dirent(&mut self, size: u32, ino: u64, next: u64, dtype: u32, name: &[u8]) -> bool {
        let len = (24 + name.len()).next_multiple_of(8);
        if self.0.len() + len > size as usize {
            return false;
        }
        self.u64(ino).u64(next).u32(name.len() as u32).u32(dtype);
        self.0.extend_from_slice(name);
        self.0.resize(self.0.len().next_multiple_of(8), 0);
        true
    }

    /// struct fuse_statfs_out with only the block size and the longest name.
    pub fn statfs(&mut self, bsize: u32, namelen: u32) -> &mut Self {
        self.u64(0).u64(0).u64(0).u64(0).u64(0);
        self.u32(bsize).u32(namelen).u32(0).u32(0);
        self.0.resize(self.0.len() + 24, 0);
        self
    }
}

/// Answers INIT into `out`, taking of `wanted` what the kernel offers; returns what was agreed.
pub fn init_reply(op: &[u8], wanted: u64, out: &mut Vec<u8>) -> u64 {
    let minor = u32_at(op, 4);
    let offered = u64::from(u32_at(op, 12)) | (u64::from(u32_at(op, 16)) << 32);
    let flags = offered & wanted;
    // struct fuse_init_out.
    let start = out.len();
    let mut o = Out(out);
    o.u32(7).u32(minor.min(45)).u32(MAX_PAYLOAD as u32);
    o.u32(flags as u32).u16(16).u16(12).u32(MAX_PAYLOAD as u32);
    o.u32(1).u16((MAX_PAYLOAD / 4096) as u16).u16(0);
    // flags2, then max_stack_depth: a passthrough backing file may not be on a stacked fs.
    o.u32((flags >> 32) as u32).u32(1);
    out.resize(start + 64, 0);
    flags
}

/// A FUSE file system served by this crate's transports.
pub trait Server: Send + Sync + 'static {
    /// Answers one request into `out` (the body only): 0 or a negative errno, `None` when the
    /// request takes no reply (FORGET, INTERRUPT) or was taken to be answered later
    /// (`later.defer()`). INIT is answered with `init_reply`.
    fn answer(
        &self,
        h: &Header,
        op: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
        later: Later<'_>,
    ) -> Option<i32>;

    /// After INIT: whether the kernel agreed to FUSE_OVER_IO_URING. `None` before.
    fn initialised(&self) -> Option<bool>;

    /// Counts a request the io_uring queues carried.
    fn carried(&self) {}
}

/// The means to answer a request after `Server::answer` has returned.
pub struct Later<'a> {
    unique: u64,
    way: Way<'a>,
}

enum Way<'a> {
    Dev(&'a Arc<OwnedFd>),
    Ring { index: usize, queue: &'a Queue },
}

impl Later<'_> {
    /// Takes the request from the transport: `answer` returns `None`, and the request is
    /// answered when the handle is, from any thread (EIO if it is dropped unanswered). `None`
    /// when the request's io_uring queue already has `PARKED` entries waiting: answer now.
    pub fn defer(self) -> Option<Deferred> {
        let to = match self.way {
            Way::Dev(fd) => To::Dev(fd.clone()),
            Way::Ring { index, queue } => {
                let parked = queue.parked.get();
                if parked >= PARKED {
                    return None;
                }
                queue.parked.set(parked + 1);
                To::Ring {
                    index,
                    answers: queue.answers.clone(),
                }
            }
        };
        Some(Deferred {
            unique: self.unique,
            to: Some(to),
        })
    }
}

/// A request taken with `Later::defer`, to be answered from any thread.
pub struct Deferred {
    unique: u64,
    /// None once answered.
    to: Option<To>,
}

enum To {
    /// Written to /dev/fuse by whoever answers.
    Dev(Arc<OwnedFd>),
    /// Handed to the queue's thread, which owns the entry's buffers and the ring.
    Ring { index: usize, answers: Arc<Answers> },
}

impl Deferred {
    /// Answers with `error`, 0 or a negative errno, and the body `body` if 0.
    pub fn reply(mut self, error: i32, body: &[u8]) {
        self.send(error, body);
    }

    fn send(&mut self, error: i32, body: &[u8]) {
        let body = if error == 0 { body } else { &[] };
        match self.to.take() {
            Some(To::Dev(fd)) => write_reply(fd.as_raw_fd(), self.unique, error, body),
            Some(To::Ring { index, answers }) => answers.give(index, error, body.to_vec()),
            None => {}
        }
    }
}

impl Drop for Deferred {
    /// A request nobody answers would hold its caller, and its ring entry, for ever.
    fn drop(&mut self) {
        self.send(-libc::EIO, &[]);
    }
}

/// The answers given later to one queue's requests, and the eventfd that wakes its thread
/// for them.
struct Answers {
    given: Mutex<Vec<(usize, i32, Vec<u8>)>>,
    wake: nix::sys::eventfd::EventFd,
}

impl Answers {
    fn new() -> std::io::Result<Self> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        // Non-blocking: the queue's thread reads it only to reset it, after its poll fired.
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Self {
            given: Mutex::default(),
            wake,
        })
    }

    fn give(&self, index: usize, error: i32, body: Vec<u8>) {
        self.given
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((index, error, body));
        // After the push: the poll this fires (now, or once re-armed) drains it. A queue
        // that has ended polls no more, and the answer goes with its connection.
        let _ = self.wake.write(1);
    }

    /// What was given since the last call; resets the eventfd first, so an answer given
    /// during the call fires the next poll.
    fn take(&self) -> Vec<(usize, i32, Vec<u8>)> {
        let _ = self.wake.read();
        std::mem::take(&mut *self.given.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A queue's waiting answers, as its thread keeps them.
struct Queue {
    answers: Arc<Answers>,
    /// Entries whose answer is to come: only this queue's thread counts them, when
    /// `Later::defer` takes a request and when the answer is committed.
    parked: Cell<usize>,
}

fn reply_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut b = [0; OUT_HEADER];
    b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&error.to_ne_bytes());
    b[8..16].copy_from_slice(&unique.to_ne_bytes());
    b
}

/// Writes the reply to request `unique` to /dev/fuse.
fn write_reply(fd: RawFd, unique: u64, error: i32, body: &[u8]) {
    let header = reply_header(OUT_HEADER + body.len(), error, unique);
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut _,
            iov_len: OUT_HEADER,
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut _,
            iov_len: body.len(),
        },
    ];
    // SAFETY: both buffers outlive the call. A failed write is a request the kernel
    // already gave up on, or a connection that has ended.
    unsafe { libc::writev(fd, iov.as_ptr(), 2) };
}

/// Opens /dev/fuse and mounts it at `dir` as `fuse.<subtype>` (read-only if `read_only`).
pub fn mount(
    dir: &Path,
    source: &str,
    subtype: &str,
    allow_other: bool,
    read_only: bool,
) -> std::io::Result<OwnedFd> {
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
    let cstr = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let (options, target) = (cstr(options.as_bytes())?, cstr(dir.as_os_str().as_bytes())?);
    let (source, fstype) = (
        cstr(source.as_bytes())?,
        cstr(format!("fuse.{subtype}").as_bytes())?,
    );
    // SAFETY: NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NODEV
                | libc::MS_NOSUID
                | libc::MS_NOEXEC
                | if read_only { libc::MS_RDONLY } else { 0 },
            options.as_ptr().cast(),
        )
    };
    if mounted != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// FUSE_NOTIFY_RESEND (Linux >= 6.9, protocol 7.40): the kernel puts every request that was
/// read from this connection and not yet answered back in its queue, to be read again (with
/// the high bit of `unique` set). A server taking over a connection from one that died sends
/// it, so the requests the dead one had read are answered instead of waiting for ever.
pub fn notify_resend(fd: &OwnedFd) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let header = reply_header(OUT_HEADER, FUSE_NOTIFY_RESEND, 0);
    // SAFETY: the header outlives the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), header.as_ptr().cast(), OUT_HEADER) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount at `dir`.
pub fn unmount(dir: &Path) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// FUSE over io_uring is off until the fuse module's `enable_uring` is set. Only a connection
/// that asks for it in INIT gets it, so mounts that do not ask are unchanged.
pub fn enable_uring() -> std::io::Result<()> {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" => Ok(()),
        Ok(_) => std::fs::write(ENABLE_URING, "1"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux >= 6.14)",
        )),
        Err(e) => Err(e),
    }
}

/// Serves the connection `fd` with `dev_threads` threads on /dev/fuse and, if `uring`, one
/// io_uring queue per possible CPU; returns once requests take the chosen transport. The
/// threads end when the connection does; the first to end is a /dev/fuse one.
pub fn serve<S: Server>(
    fd: Arc<OwnedFd>,
    server: Arc<S>,
    dev_threads: usize,
    uring: bool,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    for i in 0..dev_threads.max(1) {
        let (fd, server) = (fd.clone(), server.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fuse-dev-{i}"))
                .spawn(move || serve_dev(&fd, &*server))?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let agreed = loop {
        if let Some(agreed) = server.initialised() {
            break agreed;
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the kernel sent no FUSE INIT",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if !uring {
        return Ok(threads);
    }
    if !agreed {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the kernel did not offer FUSE over io_uring for this mount",
        ));
    }
    let (tx, rx) = mpsc::channel();
    let queues = possible_cpus();
    for q in 0..queues {
        let (fd, server, tx) = (fd.clone(), server.clone(), tx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fuse-uring-{q}"))
                .spawn(move || serve_queue(&fd, q as u16, &*server, &tx))?,
        );
    }
    for _ in 0..queues {
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| std::io::Error::other("a FUSE io_uring queue did not register"))??;
    }
    Ok(threads)
}

/// The /dev/fuse side: INIT, then FORGET and INTERRUPT (which never take the queues), and
/// everything when there are no queues or before they are up. Ends when the connection does.
fn serve_dev(conn: &Arc<OwnedFd>, server: &impl Server) {
    let fd = conn.as_raw_fd();
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
        let later = Later {
            unique: h.unique,
            way: Way::Dev(conn),
        };
        let Some(error) = server.answer(&h, op, payload, &mut out, later) else {
            continue;
        };
        write_reply(fd, h.unique, error, if error == 0 { &out } else { &[] });
    }
}

/// One CPU's queue: registers its entries, reports that, then answers requests until the
/// connection ends. Answers given later come back through `Answers`: its eventfd is polled in
/// the same ring (the ring has one issuer, this thread), and each wake commits them.
fn serve_queue(
    fd: &OwnedFd,
    qid: u16,
    server: &impl Server,
    registered: &mpsc::Sender<std::io::Result<()>>,
) {
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
    let queue = match Answers::new() {
        Ok(answers) => Queue {
            answers: Arc::new(answers),
            parked: Cell::new(0),
        },
        Err(e) => {
            let _ = registered.send(Err(e));
            return;
        }
    };
    let wake = io_uring::opcode::PollAdd::new(
        io_uring::types::Fd(queue.answers.wake.as_raw_fd()),
        libc::POLLIN as u32,
    )
    .build()
    .user_data(WAKE)
    .into();
    let fd = fd.as_raw_fd();
    let mut entries: Vec<RingEntry> = (0..ENTRIES).map(|_| RingEntry::new()).collect();
    for (i, e) in entries.iter().enumerate() {
        let sqe = e.command(fd, CMD_REGISTER, qid, i, 0);
        // SAFETY: the entry's buffers and iovecs live as long as the ring (this function).
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            let _ = registered.send(Err(std::io::Error::other("io_uring queue full")));
            return;
        }
    }
    // A REGISTER that fails completes at once; one that works stays in flight until a request
    // comes for it.
    let failed = ring
        .submit()
        .map(|_| ring.completion().map(|c| c.result()).find(|&r| r < 0));
    let ready = match failed {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(std::io::Error::from_raw_os_error(-e)),
        Err(e) => Err(e),
    };
    let ok = ready.is_ok();
    let _ = registered.send(ready);
    // SAFETY: a poll has no buffer; the eventfd lives as long as the ring (this function).
    if !ok || unsafe { ring.submission().push(&wake) }.is_err() {
        return;
    }
    let mut out = Vec::with_capacity(MAX_PAYLOAD);
    // Reused: this loop runs once per request.
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(2 * ENTRIES);
    loop {
        if ring.submit_and_wait(1).is_err() {
            return;
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, result) in &done {
            if result < 0 {
                // ENOTCONN: the connection has ended.
                return;
            }
            let mut commit = |e: &RingEntry, i: usize, commit_id: u64| {
                let sqe = e.command(fd, CMD_COMMIT_AND_FETCH, qid, i, commit_id);
                // SAFETY: as for REGISTER. There is room: each entry has at most one command
                // in flight, the poll one more, and the queue holds twice as many.
                unsafe { ring.submission().push(&sqe) }.is_ok()
            };
            if data == WAKE {
                for (i, error, body) in queue.answers.take() {
                    queue.parked.set(queue.parked.get().saturating_sub(1));
                    let Some(e) = entries.get_mut(i) else {
                        continue;
                    };
                    let commit_id = e.finish(error, &body);
                    if !commit(e, i, commit_id) {
                        return;
                    }
                }
                // SAFETY: as above.
                if unsafe { ring.submission().push(&wake) }.is_err() {
                    return;
                }
                continue;
            }
            let i = data as usize;
            let Some(e) = entries.get_mut(i) else {
                continue;
            };
            server.carried();
            if let Some(commit_id) = e.answer(server, &mut out, i, &queue)
                && !commit(e, i, commit_id)
            {
                return;
            }
        }
    }
}

/// A ring entry's buffers: the kernel writes a request into them and reads the reply back.
struct RingEntry {
    headers: Box<[u8; RING_HEADERS]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

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

    /// Answers the request the kernel put in entry `index` (this one) in place; returns its
    /// commit id, or `None` when the server took it to answer later (`finish` then).
    fn answer(
        &mut self,
        server: &impl Server,
        out: &mut Vec<u8>,
        index: usize,
        queue: &Queue,
    ) -> Option<u64> {
        let h = Header::parse(&self.headers[..IN_HEADER]);
        let size = (u32_at(&self.headers[..], RING_ENT + 16) as usize).min(MAX_PAYLOAD);
        out.clear();
        let op = &self.headers[RING_OP..RING_ENT];
        let parked = queue.parked.get();
        let later = Later {
            unique: h.unique,
            way: Way::Ring { index, queue },
        };
        let error = server.answer(&h, op, &self.payload[..size], out, later);
        if queue.parked.get() > parked {
            return None;
        }
        Some(self.finish(error.unwrap_or(0), out))
    }

    /// Puts the reply to this entry's request in its buffers; returns the commit id.
    fn finish(&mut self, error: i32, body: &[u8]) -> u64 {
        // The request's header, which only the reply's overwrites.
        let unique = u64_at(&self.headers[..], 8);
        let commit_id = u64_at(&self.headers[..], RING_ENT + 8);
        let len = if error == 0 {
            body.len().min(MAX_PAYLOAD)
        } else {
            0
        };
        self.payload[..len].copy_from_slice(&body[..len]);
        let header = reply_header(OUT_HEADER + len, error, unique);
        self.headers[..OUT_HEADER].copy_from_slice(&header);
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
pub fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    parse_cpu_ranges(&text).max(1)
}

fn parse_cpu_ranges(text: &str) -> usize {
    text.trim()
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some(b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ranges_count_every_cpu() {
        assert_eq!(parse_cpu_ranges("0-1\n"), 2);
        assert_eq!(parse_cpu_ranges("0"), 1);
        assert_eq!(parse_cpu_ranges("0-3,8-11"), 8);
        assert_eq!(parse_cpu_ranges("garbage"), 0);
    }

    #[test]
    fn replies_have_the_kernels_layouts() {
        let mut v = Vec::new();
        Out(&mut v).entry(&Attr::default(), Duration::from_secs(60), Duration::ZERO);
        assert_eq!(v.len(), 128, "fuse_entry_out");
        v.clear();
        Out(&mut v).attr_out(&Attr::default(), Duration::ZERO);
        assert_eq!(v.len(), 104, "fuse_attr_out");
        v.clear();
        Out(&mut v).statfs(512, 255);
        assert_eq!(v.len(), 80, "fuse_statfs_out");
        v.clear();
        assert!(Out(&mut v).dirent(64, 7, 1, 4, b"abc"));
        assert_eq!(v.len(), 32, "a dirent is padded to 8 bytes");
        assert!(
            !Out(&mut v).dirent(64, 8, 2, 4, b"0123456789abcdef"),
            "does not fit"
        );
        assert_eq!(v.len(), 32);
        // INIT: the agreed flags are those offered and wanted, flags2 included.
        let mut op = vec![0u8; 64];
        op[4..8].copy_from_slice(&45u32.to_ne_bytes());
        op[12..16]
            .copy_from_slice(&(init::ASYNC_READ as u32 | init::INIT_EXT as u32).to_ne_bytes());
        op[16..20].copy_from_slice(&((init::OVER_IO_URING >> 32) as u32).to_ne_bytes());
        v.clear();
        let agreed = init_reply(&op, init::OVER_IO_URING | init::INIT_EXT, &mut v);
        assert_eq!(agreed, init::OVER_IO_URING | init::INIT_EXT);
        assert_eq!(v.len(), 64, "fuse_init_out");
        assert_eq!(u32_at(&v, 12), init::INIT_EXT as u32, "flags");
        assert_eq!(u32_at(&v, 32), (init::OVER_IO_URING >> 32) as u32, "flags2");
        assert_eq!(u32_at(&v, 36), 1, "max_stack_depth");
    }
}

//! The floor under any FUSE proc view: a FUSE file system that does no work of its own. Each
//! lookup and getattr is an `lstat` of the same path under /proc, each open reads the real
//! file whole, each readdir lists the real directory. What it costs `ps` beyond /proc is what
//! the FUSE round trips cost on this machine, whatever the server does; `cargo xtask bench`
//! runs it beside the bpfproc views.
//!
//! Two transports: the classic one (threads reading requests from /dev/fuse and writing
//! replies back) and FUSE over io_uring (Linux >= 6.14), whose per-CPU queues hand a request
//! to a thread on the CPU that made it, so a round trip needs no cross-CPU wake-up.
//! The protocol is the kernel's uapi (include/uapi/linux/fuse.h, fuse-io-uring.rst).

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};

#[derive(clap::Args)]
pub struct FloorArgs {
    /// Where to mount it.
    pub dir: PathBuf,
    /// Serve over FUSE-over-io_uring queues, one per CPU, instead of /dev/fuse reads.
    #[arg(long)]
    pub uring: bool,
}

// Opcodes (enum fuse_opcode).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const READLINK: u32 = 5;
const OPEN: u32 = 14;
const READ: u32 = 15;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const ACCESS: u32 = 34;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const BATCH_FORGET: u32 = 42;

// INIT flags.
const FUSE_ASYNC_READ: u64 = 1;
const FUSE_MAX_PAGES: u64 = 1 << 22;
const FUSE_INIT_EXT: u64 = 1 << 30;
const FUSE_OVER_IO_URING: u64 = 1 << 41;
const FOPEN_DIRECT_IO: u32 = 1;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const MAX_WRITE: usize = 128 * 1024;
/// struct fuse_uring_req_header: in/out header, per-op header, struct fuse_uring_ent_in_out.
const RING_HEADERS: usize = 128 + 128 + 32;
const RING_OP: usize = 128;
const RING_ENT: usize = 256;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Ring entries per queue: `ps` has one request in flight at a time.
const ENTRIES: usize = 2;
/// How long the kernel keeps names: the same as the bpfproc views. Attributes are never kept.
const ENTRY_SECS: u64 = 60;

/// The size of the op-specific struct that leads a request's body. Over io_uring the kernel
/// puts it in the ring header and the rest (a name, say) in the payload; over /dev/fuse it
/// is the body's prefix.
fn op_header_size(opcode: u32) -> usize {
    match opcode {
        GETATTR => 16,
        OPEN | OPENDIR | FORGET | INTERRUPT | BATCH_FORGET | ACCESS | GETXATTR | LISTXATTR => 8,
        READ | READDIR => 40,
        RELEASE | RELEASEDIR | FLUSH => 24,
        INIT => 64,
        _ => 0,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap_or_default()))
}

#[derive(Clone, Copy)]
struct Header {
    opcode: u32,
    unique: u64,
    nodeid: u64,
    pid: u32,
}

impl Header {
    fn parse(b: &[u8]) -> Self {
        Self {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
            pid: u32_at(b, 32),
        }
    }
}

enum Reply {
    /// FORGET and INTERRUPT take none.
    None,
    Error(i32),
    Data(Vec<u8>),
}

/// Appends the plain-old-data fields of a reply in their C layout.
struct Out(Vec<u8>);

impl Out {
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
    /// struct fuse_attr. Sizes are 0 as on /proc.
    fn attr(&mut self, ino: u64, md: &std::fs::Metadata) -> &mut Self {
        self.u64(ino).u64(0).u64(0);
        self.u64(md.atime() as u64)
            .u64(md.mtime() as u64)
            .u64(md.ctime() as u64);
        self.u32(0).u32(0).u32(0);
        self.u32(md.mode()).u32(md.nlink() as u32);
        self.u32(md.uid()).u32(md.gid()).u32(0).u32(1024).u32(0)
    }
}

fn os_error(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A listed directory entry: inode, DT_* type, name.
type Dirent = (u64, u32, String);

#[derive(Default)]
struct Inodes {
    paths: Vec<String>,
    numbers: HashMap<String, u64>,
}

struct Floor {
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Vec<u8>>>,
    dirs: Mutex<HashMap<u64, Vec<Dirent>>>,
    next_fh: AtomicU64,
    uring: bool,
    initialised: AtomicBool,
    over_dev: AtomicU64,
    over_uring: AtomicU64,
}

impl Floor {
    fn new(uring: bool) -> Self {
        // Inode 1 is the root, "" under /proc; 0 is never used.
        let inodes = Inodes {
            paths: vec![String::new(), String::new()],
            numbers: HashMap::from([(String::new(), 1)]),
        };
        Self {
            inodes: Mutex::new(inodes),
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            uring,
            initialised: AtomicBool::new(false),
            over_dev: AtomicU64::new(0),
            over_uring: AtomicU64::new(0),
        }
    }

    fn path(&self, ino: u64) -> Option<String> {
        let inodes = self.inodes.lock().ok()?;
        inodes.paths.get(ino as usize).cloned()
    }

    fn ino(&self, path: &str) -> u64 {
        let Ok(mut inodes) = self.inodes.lock() else {
            return 0;
        };
        if let Some(&n) = inodes.numbers.get(path) {
            return n;
        }
        let n = inodes.paths.len() as u64;
        inodes.paths.push(path.to_owned());
        inodes.numbers.insert(path.to_owned(), n);
        n
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn handle(&self, h: Header, op: &[u8], payload: &[u8]) -> Reply {
        let path = || self.path(h.nodeid).ok_or(libc::ENOENT);
        let result = match h.opcode {
            INIT => Ok(self.init(op)),
            LOOKUP => path().and_then(|parent| {
                let name = payload.split(|&c| c == 0).next().unwrap_or_default();
                let path = format!("{parent}/{}", String::from_utf8_lossy(name));
                let md =
                    std::fs::symlink_metadata(format!("/proc{path}")).map_err(|e| os_error(&e))?;
                let ino = self.ino(&path);
                let mut out = Out(Vec::with_capacity(128));
                out.u64(ino).u64(0).u64(ENTRY_SECS).u64(0).u32(0).u32(0);
                out.attr(ino, &md);
                Ok(out.0)
            }),
            GETATTR => path().and_then(|path| {
                let md =
                    std::fs::symlink_metadata(format!("/proc{path}")).map_err(|e| os_error(&e))?;
                let mut out = Out(Vec::with_capacity(104));
                out.u64(0).u32(0).u32(0).attr(h.nodeid, &md);
                Ok(out.0)
            }),
            READLINK => path().and_then(|path| {
                // /proc/self names the caller, not this server.
                if path == "/self" {
                    return Ok(h.pid.to_string().into_bytes());
                }
                std::fs::read_link(format!("/proc{path}"))
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .map_err(|e| os_error(&e))
            }),
            OPEN => path().and_then(|path| {
                let data = std::fs::read(format!("/proc{path}")).map_err(|e| os_error(&e))?;
                let fh = self.fh();
                if let Ok(mut files) = self.files.lock() {
                    files.insert(fh, data);
                }
                let mut out = Out(Vec::with_capacity(16));
                out.u64(fh).u32(FOPEN_DIRECT_IO).u32(0);
                Ok(out.0)
            }),
            READ => {
                let (fh, offset, size) = (u64_at(op, 0), u64_at(op, 8) as usize, u32_at(op, 16));
                let files = self.files.lock();
                files
                    .ok()
                    .and_then(|f| {
                        let data = f.get(&fh)?;
                        let start = offset.min(data.len());
                        let end = (offset + size as usize).min(data.len());
                        Some(data[start..end].to_vec())
                    })
                    .ok_or(libc::EBADF)
            }
            RELEASE => {
                if let Ok(mut files) = self.files.lock() {
                    files.remove(&u64_at(op, 0));
                }
                Ok(Vec::new())
            }
            OPENDIR => path().and_then(|path| self.opendir(h.nodeid, &path)),
            READDIR => self.readdir(u64_at(op, 0), u64_at(op, 8) as usize, u32_at(op, 16)),
            RELEASEDIR => {
                if let Ok(mut dirs) = self.dirs.lock() {
                    dirs.remove(&u64_at(op, 0));
                }
                Ok(Vec::new())
            }
            STATFS => {
                // struct fuse_kstatfs: only the block size and the name length are non-zero.
                let mut out = Out(vec![0; 40]);
                out.u32(4096).u32(255).u32(0).u32(0);
                out.0.resize(80, 0);
                Ok(out.0)
            }
            FORGET | BATCH_FORGET | INTERRUPT => return Reply::None,
            DESTROY => Ok(Vec::new()),
            _ => Err(libc::ENOSYS),
        };
        match result {
            Ok(data) => Reply::Data(data),
            Err(errno) => Reply::Error(errno),
        }
    }

    fn init(&self, op: &[u8]) -> Vec<u8> {
        let minor = u32_at(op, 4);
        let offered = u64::from(u32_at(op, 12)) | (u64::from(u32_at(op, 16)) << 32);
        let mut wanted = FUSE_ASYNC_READ | FUSE_MAX_PAGES | FUSE_INIT_EXT;
        if self.uring {
            wanted |= FUSE_OVER_IO_URING;
        }
        let flags = offered & wanted;
        if self.uring && flags & FUSE_OVER_IO_URING == 0 {
            eprintln!("the kernel did not offer FUSE_OVER_IO_URING (flags {offered:#x})");
        }
        // struct fuse_init_out.
        let mut out = Out(Vec::with_capacity(64));
        out.u32(7).u32(minor.min(45)).u32(MAX_WRITE as u32);
        out.u32(flags as u32).u16(16).u16(12).u32(MAX_WRITE as u32);
        out.u32(1).u16((MAX_WRITE / 4096) as u16).u16(0);
        out.u32((flags >> 32) as u32);
        out.0.resize(64, 0);
        self.initialised.store(true, Ordering::Release);
        out.0
    }

    fn opendir(&self, ino: u64, path: &str) -> Result<Vec<u8>, i32> {
        let entries = std::fs::read_dir(format!("/proc{path}")).map_err(|e| os_error(&e))?;
        let mut list = vec![(ino, libc::DT_DIR as u32, ".".to_owned())];
        list.push((1, libc::DT_DIR as u32, "..".to_owned()));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => libc::DT_DIR,
                Ok(t) if t.is_symlink() => libc::DT_LNK,
                _ => libc::DT_REG,
            };
            list.push((self.ino(&format!("{path}/{name}")), kind as u32, name));
        }
        let fh = self.fh();
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.insert(fh, list);
        }
        let mut out = Out(Vec::with_capacity(16));
        out.u64(fh).u32(0).u32(0);
        Ok(out.0)
    }

    fn readdir(&self, fh: u64, offset: usize, size: u32) -> Result<Vec<u8>, i32> {
        let dirs = self.dirs.lock().map_err(|_| libc::EIO)?;
        let list = dirs.get(&fh).ok_or(libc::EBADF)?;
        let mut out = Out(Vec::with_capacity(size as usize));
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset) {
            // struct fuse_dirent, padded to 8 bytes.
            let len = (24 + name.len()).next_multiple_of(8);
            if out.0.len() + len > size as usize {
                break;
            }
            out.u64(*ino)
                .u64(i as u64 + 1)
                .u32(name.len() as u32)
                .u32(*kind);
            out.0.extend_from_slice(name.as_bytes());
            out.0.resize(out.0.len().next_multiple_of(8), 0);
        }
        Ok(out.0)
    }
}

fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut b = [0; OUT_HEADER];
    b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&error.to_ne_bytes());
    b[8..16].copy_from_slice(&unique.to_ne_bytes());
    b
}

/// One thread of the classic transport: read a request, answer it, until unmounted.
fn serve_dev(floor: &Floor, fd: i32) {
    let mut buf = vec![0u8; MAX_WRITE + 8192];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // Interrupted, or a request aborted before it was read.
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                // ENODEV: unmounted.
                _ => return,
            }
        }
        let request = &buf[..n as usize];
        let h = Header::parse(request);
        let body = request.get(IN_HEADER..).unwrap_or_default();
        let (op, payload) = body.split_at(op_header_size(h.opcode).min(body.len()));
        floor.over_dev.fetch_add(1, Ordering::Relaxed);
        let (error, data) = match floor.handle(h, op, payload) {
            Reply::None => continue,
            Reply::Error(e) => (-e, Vec::new()),
            Reply::Data(d) => (0, d),
        };
        let header = out_header(OUT_HEADER + data.len(), error, h.unique);
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut _,
                iov_len: OUT_HEADER,
            },
            libc::iovec {
                iov_base: data.as_ptr() as *mut _,
                iov_len: data.len(),
            },
        ];
        // SAFETY: both buffers outlive the call. A failed write is a request the kernel
        // gave up on (interrupted): nothing to do.
        unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    }
}

/// The buffers of one ring entry: the kernel writes requests into them and reads replies.
struct Entry {
    headers: Box<[u8; RING_HEADERS]>,
    payload: Vec<u8>,
    iov: [libc::iovec; 2],
}

/// One CPU's queue of the io_uring transport, on a thread pinned to that CPU. Sends
/// `registered` once its entries are with the kernel.
fn serve_uring(
    floor: &Floor,
    fd: i32,
    qid: u16,
    registered: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use io_uring::{IoUring, cqueue, opcode, squeue, types};
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for qid < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(usize::from(qid), &mut set);
        // A possible but offline CPU cannot be pinned to; its queue still has to exist.
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let setup = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(2 * ENTRIES as u32)
        .context("io_uring_setup");
    let mut ring = match setup {
        Ok(r) => r,
        Err(e) => {
            let _ = registered.send(Err(anyhow::anyhow!("{e:#}")));
            return Ok(());
        }
    };
    let mut entries: Vec<Entry> = (0..ENTRIES)
        .map(|_| Entry {
            headers: Box::new([0; RING_HEADERS]),
            payload: vec![0; MAX_WRITE],
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
        })
        .collect();
    for e in &mut entries {
        e.iov = [
            libc::iovec {
                iov_base: e.headers.as_mut_ptr().cast(),
                iov_len: RING_HEADERS,
            },
            libc::iovec {
                iov_base: e.payload.as_mut_ptr().cast(),
                iov_len: MAX_WRITE,
            },
        ];
    }
    let command = |cmd: u32, i: usize, iov: &[libc::iovec; 2], commit_id: u64| {
        // struct fuse_uring_cmd_req: flags, commit_id, qid.
        let mut req = [0u8; 80];
        req[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        req[16..18].copy_from_slice(&qid.to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(fd), cmd)
            .cmd(req)
            .addr(Some(iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        // SAFETY: Entry128 is repr(C) over the 128-byte SQE. The kernel wants the iovec count
        // in `len` (offset 24), which the crate has no setter for.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: the same bytes with one field set.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    };
    for (i, e) in entries.iter().enumerate() {
        // SAFETY: the iovecs and buffers live as long as the ring (this function).
        unsafe { ring.submission().push(&command(CMD_REGISTER, i, &e.iov, 0)) }
            .map_err(|_| anyhow::anyhow!("submission queue full"))?;
    }
    // A REGISTER fails at submission or stays in flight until a request comes.
    ring.submit().context("registering ring entries")?;
    let failed: Vec<i32> = ring.completion().map(|c| c.result()).collect();
    if let Some(e) = failed.first() {
        let _ = registered.send(Err(anyhow::anyhow!(
            "FUSE_IO_URING_CMD_REGISTER: {}",
            std::io::Error::from_raw_os_error(-e)
        )));
        return Ok(());
    }
    let _ = registered.send(Ok(()));
    loop {
        ring.submit_and_wait(1)?;
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (i, result) in done {
            if result < 0 {
                // ENOTCONN: unmounted.
                return Ok(());
            }
            let e = &mut entries[i];
            let h = Header::parse(&e.headers[..IN_HEADER]);
            let commit_id = u64_at(&e.headers[..], RING_ENT + 8);
            let size = (u32_at(&e.headers[..], RING_ENT + 16) as usize).min(MAX_WRITE);
            let op = e.headers[RING_OP..RING_ENT].to_vec();
            floor.over_uring.fetch_add(1, Ordering::Relaxed);
            let (error, len) = match floor.handle(h, &op, &e.payload[..size]) {
                Reply::None => (0, 0),
                Reply::Error(errno) => (-errno, 0),
                Reply::Data(d) => {
                    let len = d.len().min(MAX_WRITE);
                    e.payload[..len].copy_from_slice(&d[..len]);
                    (0, len)
                }
            };
            e.headers[..OUT_HEADER].copy_from_slice(&out_header(OUT_HEADER + len, error, h.unique));
            e.headers[RING_ENT + 16..RING_ENT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
            // SAFETY: as for REGISTER.
            unsafe {
                ring.submission()
                    .push(&command(CMD_COMMIT_AND_FETCH, i, &e.iov, commit_id))
            }
            .map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
    }
}

/// How many CPUs the kernel may ever use: it wants a queue for each before it uses any.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    text.trim()
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1)
        })
        .sum::<usize>()
        .max(1)
}

/// Mounts the floor at `args.dir` and serves it until it is unmounted. Prints `ready` once
/// requests take the chosen transport.
pub fn run(args: FloorArgs) -> anyhow::Result<()> {
    // SAFETY: a plain open; the descriptor is closed when the process ends.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!("/dev/fuse: {}", std::io::Error::last_os_error());
    }
    let options = CString::new(format!(
        "fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other"
    ))?;
    let target = CString::new(args.dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"floor".as_ptr(),
            target.as_ptr(),
            c"fuse.floor".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if mounted != 0 {
        bail!(
            "mount {}: {}",
            args.dir.display(),
            std::io::Error::last_os_error()
        );
    }
    let floor = Floor::new(args.uring);
    std::thread::scope(|s| -> anyhow::Result<()> {
        // The /dev/fuse threads answer INIT, and FORGET and INTERRUPT under io_uring too.
        for _ in 0..2 {
            s.spawn(|| serve_dev(&floor, fd));
        }
        while !floor.initialised.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if args.uring {
            let (tx, rx) = std::sync::mpsc::channel();
            let queues = possible_cpus();
            for q in 0..queues {
                let (floor, tx) = (&floor, tx.clone());
                s.spawn(move || {
                    if let Err(e) = serve_uring(floor, fd, q as u16, tx) {
                        eprintln!("queue {q}: {e:#}");
                    }
                });
            }
            for _ in 0..queues {
                if let Err(e) = rx.recv()? {
                    // Leave nothing mounted behind: the threads end with the connection.
                    let _ = std::process::Command::new("umount").arg(&args.dir).status();
                    return Err(e);
                }
            }
        }
        println!("ready");
        Ok(())
    })?;
    eprintln!(
        "requests over /dev/fuse: {}, over io_uring: {}",
        floor.over_dev.load(Ordering::Relaxed),
        floor.over_uring.load(Ordering::Relaxed)
    );
    Ok(())
}

//! The floor under any FUSE proc view: a FUSE file system that does no work of its own. Each
//! lookup and getattr is an `lstat` of the same path under /proc, each open reads the real
//! file whole, each readdir lists the real directory. What it costs `ps` beyond /proc is what
//! the FUSE round trips cost on this machine, whatever the server does; `cargo xtask bench`
//! runs it beside the bpfproc views, over the same transports as the agent's (the `fusewire`
//! crate): /dev/fuse threads, or io_uring queues, one per CPU.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use fusewire::{Attr, Header, Out, init, op, u32_at, u64_at};

#[derive(clap::Args)]
pub struct FloorArgs {
    /// Where to mount it.
    pub dir: PathBuf,
    /// Serve over FUSE-over-io_uring queues, one per CPU, instead of /dev/fuse reads.
    #[arg(long)]
    pub uring: bool,
}

/// How long the kernel keeps names: the same as the bpfproc views. Attributes are never kept.
const ENTRY_TTL: Duration = Duration::from_secs(60);

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
    agreed: Mutex<Option<bool>>,
    over_uring: AtomicU64,
    requests: AtomicU64,
}

fn attr(ino: u64, md: &std::fs::Metadata) -> Attr {
    Attr {
        ino,
        atime: (md.atime() as u64, 0),
        mtime: (md.mtime() as u64, 0),
        ctime: (md.ctime() as u64, 0),
        mode: md.mode(),
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        blksize: 1024,
        // Sizes are 0, as on /proc.
        ..Attr::default()
    }
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
            agreed: Mutex::new(None),
            over_uring: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn path(&self, ino: u64) -> Result<String, i32> {
        let inodes = self.inodes.lock().map_err(|_| libc::EIO)?;
        inodes.paths.get(ino as usize).cloned().ok_or(libc::ENOENT)
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

    fn reply(&self, h: &Header, op: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), i32> {
        let lstat = |path: &str| {
            std::fs::symlink_metadata(format!("/proc{path}")).map_err(|e| os_error(&e))
        };
        match h.opcode {
            op::INIT => {
                let mut wanted = init::ASYNC_READ | init::MAX_PAGES | init::INIT_EXT;
                if self.uring {
                    wanted |= init::OVER_IO_URING;
                }
                let agreed = fusewire::init_reply(op, wanted, out);
                if let Ok(mut a) = self.agreed.lock() {
                    *a = Some(agreed & init::OVER_IO_URING != 0);
                }
            }
            op::LOOKUP => {
                let name = payload.split(|&c| c == 0).next().unwrap_or_default();
                let path = format!("{}/{}", self.path(h.nodeid)?, String::from_utf8_lossy(name));
                let md = lstat(&path)?;
                Out(out).entry(&attr(self.ino(&path), &md), ENTRY_TTL, Duration::ZERO);
            }
            op::GETATTR => {
                let md = lstat(&self.path(h.nodeid)?)?;
                Out(out).attr_out(&attr(h.nodeid, &md), Duration::ZERO);
            }
            op::READLINK => {
                let path = self.path(h.nodeid)?;
                // /proc/self names the caller, not this server.
                let target = if path == "/self" {
                    h.pid.to_string().into_bytes()
                } else {
                    std::fs::read_link(format!("/proc{path}"))
                        .map_err(|e| os_error(&e))?
                        .into_os_string()
                        .into_encoded_bytes()
                };
                out.extend_from_slice(&target);
            }
            op::OPEN => {
                let path = self.path(h.nodeid)?;
                let data = std::fs::read(format!("/proc{path}")).map_err(|e| os_error(&e))?;
                let fh = self.fh();
                self.files.lock().map_err(|_| libc::EIO)?.insert(fh, data);
                Out(out).open(fh, fusewire::FOPEN_DIRECT_IO, 0);
            }
            op::READ => {
                let files = self.files.lock().map_err(|_| libc::EIO)?;
                let data = files.get(&u64_at(op, 0)).ok_or(libc::EBADF)?;
                out.extend_from_slice(fusewire::window(data, u64_at(op, 8), u32_at(op, 16)));
            }
            op::RELEASE => {
                self.files
                    .lock()
                    .map_err(|_| libc::EIO)?
                    .remove(&u64_at(op, 0));
            }
            op::OPENDIR => {
                let fh = self.opendir(h.nodeid, &self.path(h.nodeid)?)?;
                Out(out).open(fh, 0, 0);
            }
            op::READDIR => {
                let dirs = self.dirs.lock().map_err(|_| libc::EIO)?;
                let list = dirs.get(&u64_at(op, 0)).ok_or(libc::EBADF)?;
                let (offset, size) = (u64_at(op, 8) as usize, u32_at(op, 16));
                for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset) {
                    if !Out(out).dirent(size, *ino, i as u64 + 1, *kind, name.as_bytes()) {
                        break;
                    }
                }
            }
            op::RELEASEDIR => {
                self.dirs
                    .lock()
                    .map_err(|_| libc::EIO)?
                    .remove(&u64_at(op, 0));
            }
            op::STATFS => {
                Out(out).statfs(4096, 255);
            }
            op::DESTROY => {}
            _ => return Err(libc::ENOSYS),
        }
        Ok(())
    }

    /// Lists the real directory now, for the READDIRs of the handle returned.
    fn opendir(&self, ino: u64, path: &str) -> Result<u64, i32> {
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
        self.dirs.lock().map_err(|_| libc::EIO)?.insert(fh, list);
        Ok(fh)
    }
}

impl fusewire::Server for Floor {
    fn answer(
        &self,
        h: &Header,
        op: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
        _later: fusewire::Later<'_>,
    ) -> Option<i32> {
        if matches!(h.opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT) {
            return None;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(self.reply(h, op, payload, out).map_or_else(|e| -e, |()| 0))
    }

    fn initialised(&self) -> Option<bool> {
        *self.agreed.lock().ok()?
    }

    fn carried(&self) {
        self.over_uring.fetch_add(1, Ordering::Relaxed);
    }
}

/// Mounts the floor at `args.dir` and serves it until it is unmounted. Prints `ready` once
/// requests take the chosen transport.
pub fn run(args: FloorArgs) -> anyhow::Result<()> {
    if args.uring {
        fusewire::enable_uring()?;
    }
    let fd = Arc::new(
        fusewire::mount(&args.dir, "floor", "floor", true, false)
            .with_context(|| format!("mounting {}", args.dir.display()))?,
    );
    let floor = Arc::new(Floor::new(args.uring));
    // Two /dev/fuse threads, as fuser runs for the bpfproc views.
    let threads = match fusewire::serve(fd, floor.clone(), 2, args.uring) {
        Ok(t) => t,
        Err(e) => {
            let _ = fusewire::unmount(&args.dir);
            return Err(e.into());
        }
    };
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    let all = floor.requests.load(Ordering::Relaxed);
    let uring = floor.over_uring.load(Ordering::Relaxed);
    eprintln!(
        "requests over /dev/fuse: {}, over io_uring: {uring}",
        all - uring
    );
    Ok(())
}

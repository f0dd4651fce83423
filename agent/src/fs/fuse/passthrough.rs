//! `-o passthrough`: FUSE passthrough for rendered files on never-stale mounts (Linux ≥ 6.9).
//!
//! A file's contents are rendered at open anyway; instead of keeping them for the READs that
//! follow, the agent writes them to a memfd and registers it as the open file's backing file.
//! The kernel then serves read(2) from the memfd itself: the READ round trip, about half of
//! what a caller waits for per file, disappears, and RELEASE is sent in the background. Every
//! open still renders afresh, so nothing served is older than the staleness bound.
//!
//! The kernel allows one backing file per inode at a time and wants every open of an inode
//! that has one to use it. So while a file has open handles, a new open shares that inode's
//! memfd, rewritten in place if its own rendering differs (a reused pid's new process, or
//! numbers that moved). Each open thus reads a rendering made at that open. A handle opened
//! earlier that reads again afterwards sees the newer rendering, and one caught between two
//! partial reads of a file whose contents changed can see the two spliced; tools open, read
//! and close these files in one go. That sharing is why it is an option and not the default:
//! without it every open keeps its own rendering for as long as it is open, even across the
//! reuse of its pid.
//!
//! A backing outlives its last handle for a while (`KEEP_IDLE`), so reading the same file
//! again costs the memfd nothing if the contents did not change, or one rewrite if they did.

use std::{
    collections::HashMap,
    io::Write as _,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use fuser::{BackingId, InitFlags, KernelConfig};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// Whether the connection negotiated passthrough, and the backing of each inode with open
/// handles or recently closed ones.
#[derive(Default)]
pub(super) struct Passthrough {
    on: AtomicBool,
    open: Mutex<Backings>,
}

/// Backings of files nobody has open kept for the next open of the same file, which then
/// costs no syscall if the contents did not change (a sleeping process's `status`), or a
/// rewrite of the memfd if they did, instead of a new memfd and two ioctls. Each keeps a
/// memfd (one page, usually) and its descriptor.
const KEEP_IDLE: usize = 1024;

#[derive(Default)]
struct Backings {
    by_ino: HashMap<u64, Backing>,
    /// Inodes in the order their backings went idle; may hold ones reopened since.
    idle: std::collections::VecDeque<u64>,
    idle_n: usize,
}

impl Backings {
    fn went_idle(&mut self, ino: u64) {
        self.idle.push_back(ino);
        self.idle_n += 1;
        while self.idle_n > KEEP_IDLE {
            let Some(old) = self.idle.pop_front() else {
                break;
            };
            if self.by_ino.get(&old).is_some_and(|b| b.handles == 0) {
                self.by_ino.remove(&old);
                self.idle_n -= 1;
            }
        }
        if self.idle.len() > 4 * KEEP_IDLE {
            let by_ino = &self.by_ino;
            let mut seen = std::collections::HashSet::new();
            self.idle
                .retain(|i| by_ino.get(i).is_some_and(|b| b.handles == 0) && seen.insert(*i));
        }
    }
}

/// A backing file registered with the kernel; dropping it unregisters it.
pub(super) enum Id {
    /// Through fuser, which closes it when its `BackingId` drops.
    Fuser(BackingId),
    /// Through the `/dev/fuse` descriptor of a `uring` mount (fuse/uring.rs).
    Dev { dev: Arc<OwnedFd>, id: u32 },
}

impl Drop for Id {
    fn drop(&mut self) {
        if let Id::Dev { dev, id } = self {
            // SAFETY: `id` is a live u32, all BACKING_CLOSE reads. It fails harmlessly once
            // the connection has ended.
            let _ = unsafe { backing_close(dev.as_raw_fd(), &raw const *id) };
        }
    }
}

// FUSE_DEV_IOC_BACKING_OPEN, `_IOW(229, 1, struct fuse_backing_map)` (fd, flags, padding),
// and FUSE_DEV_IOC_BACKING_CLOSE, `_IOW(229, 2, uint32_t)`.
nix::ioctl_write_ptr!(backing_open, 229, 1, [u32; 4]);
nix::ioctl_write_ptr!(backing_close, 229, 2, u32);

/// Registers `file` as a backing file on the FUSE connection `dev`.
pub(super) fn register(dev: &Arc<OwnedFd>, file: &std::fs::File) -> std::io::Result<Id> {
    // struct fuse_backing_map: fd, flags, padding.
    let map: [u32; 4] = [file.as_raw_fd() as u32, 0, 0, 0];
    // SAFETY: `map` is the 16 bytes the kernel reads.
    let id = unsafe { backing_open(dev.as_raw_fd(), &raw const map) }?;
    Ok(Id::Dev {
        dev: dev.clone(),
        id: id as u32,
    })
}

struct Backing {
    file: std::fs::File,
    id: Arc<Id>,
    handles: u32,
    /// What the memfd holds.
    contents: Vec<u8>,
}

impl Passthrough {
    /// Asks for passthrough in INIT; a kernel without it leaves the mount on direct I/O.
    pub(super) fn negotiate(&self, config: &mut KernelConfig) {
        let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.negotiated(ok);
    }

    /// Whether INIT agreed to passthrough (fuse/uring.rs negotiates it itself).
    pub(super) fn negotiated(&self, ok: bool) {
        self.on.store(ok, Ordering::Relaxed);
        tracing::debug!(passthrough = ok, "FUSE init");
    }

    /// The backing for a new handle on `ino` holding `bytes`, registered by `register` if the
    /// inode has none yet; `None` when this open must be served by READs (passthrough off or
    /// failing).
    pub(super) fn back(
        &self,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<Id>,
        ino: u64,
        bytes: &[u8],
    ) -> Option<Arc<Id>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        // Held across the memfd and the ioctl: two opens of one inode racing to register two
        // backings would make the kernel fail the second with EBUSY.
        let mut open = self.open.lock().ok()?;
        let open = &mut *open;
        if let Some(b) = open.by_ino.get_mut(&ino) {
            if b.contents != bytes {
                if let Err(e) = rewrite(&b.file, bytes) {
                    tracing::warn!("rewriting a passthrough file: {e}");
                    if b.handles == 0 {
                        open.by_ino.remove(&ino);
                        open.idle_n -= 1;
                    }
                    // With handles open the kernel insists on this backing for the inode;
                    // without fresh contents in it, refuse rather than serve stale ones.
                    return None;
                }
                b.contents.clear();
                b.contents.extend_from_slice(bytes);
            }
            if b.handles == 0 {
                open.idle_n -= 1;
            }
            b.handles += 1;
            return Some(b.id.clone());
        }
        let made = memfd(bytes).and_then(|file| {
            let id = register(&file)?;
            Ok(Backing {
                file,
                id: Arc::new(id),
                handles: 1,
                contents: bytes.to_vec(),
            })
        });
        match made {
            Ok(b) => {
                let id = b.id.clone();
                open.by_ino.insert(ino, b);
                Some(id)
            }
            Err(e) => {
                // EPERM (no CAP_SYS_ADMIN) or a kernel that refuses memfds will refuse every
                // time: stop trying. Anything else (ENOMEM, EMFILE) may pass next time.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::EINVAL | libc::ELOOP)
                ) {
                    tracing::warn!("FUSE passthrough unavailable, serving reads instead: {e}");
                    self.on.store(false, Ordering::Relaxed);
                }
                None
            }
        }
    }

    /// Whether `ino` has open handles on a backing file, which every open of it must then use.
    pub(super) fn backed(&self, ino: u64) -> bool {
        self.open
            .lock()
            .is_ok_and(|o| o.by_ino.get(&ino).is_some_and(|b| b.handles > 0))
    }

    /// A backed handle on `ino` was released. After the last one the backing is kept for the
    /// next open, among the `KEEP_IDLE` latest; older ones close their backing id and memfd
    /// (the kernel keeps its own references while files still use them).
    pub(super) fn closed(&self, ino: u64) {
        if let Ok(mut open) = self.open.lock()
            && let Some(b) = open.by_ino.get_mut(&ino)
            && b.handles > 0
        {
            b.handles -= 1;
            if b.handles == 0 {
                open.went_idle(ino);
            }
        }
    }
}

fn rewrite(file: &std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)
}

fn memfd(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    let fd = memfd_create(c"bpfproc", MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(file)
}

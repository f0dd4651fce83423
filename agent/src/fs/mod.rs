//! FUSE mounts of the proc view: any number, each with its own options, all served from the one
//! process table. `Mounts` owns them; the control socket and `--mount` drive it.

mod access;
mod bsd;
mod fuse;
mod kernel_files;
mod kernel_tree;
pub mod options;
pub mod personality;
pub mod processes;
pub mod show;
pub mod tree;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use std::os::{
    fd::{AsFd as _, OwnedFd},
    unix::ffi::OsStringExt as _,
};

use fuser::{Config, MountOption, SessionACL};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::stat::{major, minor},
};

pub use options::MountOptions;

/// The FUSE operations the views answer, for counting: round trips are what a view costs,
/// and which ones a tool causes says what to make cheaper.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Lookup,
    Getattr,
    Access,
    Readlink,
    Open,
    Read,
    Write,
    Release,
    Flush,
    Opendir,
    Readdir,
    Releasedir,
    Ioctl,
    Setattr,
}

impl Op {
    pub const ALL: [Op; 14] = [
        Op::Lookup,
        Op::Getattr,
        Op::Access,
        Op::Readlink,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Release,
        Op::Flush,
        Op::Opendir,
        Op::Readdir,
        Op::Releasedir,
        Op::Ioctl,
        Op::Setattr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Access => "access",
            Op::Readlink => "readlink",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Release => "release",
            Op::Flush => "flush",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Ioctl => "ioctl",
            Op::Setattr => "setattr",
        }
    }
}

/// FUSE requests answered by every mount of this agent, by operation.
static REQUESTS: [std::sync::atomic::AtomicU64; Op::ALL.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; Op::ALL.len()];

fn count_request(op: Op) {
    REQUESTS[op as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// (operation, requests answered) for every operation, in `Op::ALL` order.
pub fn requests() -> impl Iterator<Item = (&'static str, u64)> {
    Op::ALL.into_iter().map(|op| {
        (
            op.name(),
            REQUESTS[op as usize].load(std::sync::atomic::Ordering::Relaxed),
        )
    })
}

use crate::{
    state::State,
    sys::fdstore::{self, Holder},
    view::Host,
};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0} is already a bpfproc mount")]
    Busy(PathBuf),
    #[error("{0} is not a bpfproc mount of this agent")]
    NotMounted(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Options(#[from] options::OptionError),
}

struct Mounted {
    session: Transport,
    options: String,
    /// A dup of the connection's /dev/fuse descriptor and the name it is kept under outside
    /// the agent (`sys::fdstore`): a view that outlives its agent. None on `-o uring` mounts,
    /// whose io_uring queues die with the agent (docs/service.md).
    kept: Option<(String, OwnedFd)>,
    /// The view's `processes::Live::leaving`.
    leaving: Arc<std::sync::atomic::AtomicBool>,
}

/// Who serves a mount: fuser's threads on /dev/fuse, or our io_uring queues (`-o uring`).
enum Transport {
    Fuser(fuser::BackgroundSession),
    /// fuser's threads on a connection another agent mounted (`Mounts::adopt`): fuser knows
    /// no mount to remove, so the mount point is unmounted by path.
    Adopted(fuser::BackgroundSession, PathBuf),
    Uring(fuse::uring::Session),
}

impl Transport {
    /// Whether the connection has ended (someone unmounted the view from outside).
    fn is_finished(&self) -> bool {
        match self {
            Transport::Fuser(s) | Transport::Adopted(s, _) => s.guard.is_finished(),
            Transport::Uring(s) => s.is_finished(),
        }
    }

    fn umount_and_join(self) -> std::io::Result<()> {
        match self {
            Transport::Fuser(s) => s.umount_and_join(),
            Transport::Adopted(s, dir) => {
                // As fuser does: a busy mount is an error.
                nix::mount::umount2(&dir, nix::mount::MntFlags::empty())?;
                s.join()
            }
            Transport::Uring(s) => s.umount_and_join(),
        }
    }
}

/// Requests the io_uring queues have carried, over all `-o uring` mounts.
pub fn uring_requests() -> u64 {
    fuse::uring::REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The FUSE views' own counters, which `/v1/stats` shows beside the table's.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FuseStats {
    /// FUSE requests answered by all mounts, and by operation.
    pub fuse_requests: u64,
    pub fuse_requests_by_op: BTreeMap<&'static str, u64>,
    /// Of all FUSE requests, those the io_uring queues of `-o uring` mounts carried.
    pub fuse_uring_requests: u64,
}

impl FuseStats {
    pub fn now() -> Self {
        let by_op: BTreeMap<_, _> = requests().collect();
        Self {
            fuse_requests: by_op.values().sum(),
            fuse_requests_by_op: by_op,
            fuse_uring_requests: uring_requests(),
        }
    }
}

pub struct Mounts {
    state: State,
    host: Host,
    rt: tokio::runtime::Handle,
    control: Option<fuse::ControlFiles>,
    live: Mutex<BTreeMap<PathBuf, Mounted>>,
    /// Where the views' connections are kept across the agent's restarts, and a directory
    /// for the handshake of a connection taken over (`adopt`).
    keep: Option<(Arc<Holder>, PathBuf)>,
}

/// A view handed from one agent to the next: its mount point, options and connection.
pub struct Handed {
    pub dir: PathBuf,
    pub options: String,
    pub fd: OwnedFd,
}

impl Handed {
    /// The name a view's connection is kept under: its mount point and options.
    fn name(dir: &Path, options: &str) -> Option<String> {
        fdstore::name(&[
            b"view",
            dir.as_os_str().as_encoded_bytes(),
            options.as_bytes(),
        ])
    }

    /// The view a kept descriptor is, by its name; None for anything else.
    pub fn from_kept(k: fdstore::Kept) -> Option<Self> {
        let parts = fdstore::parts(&k.name)?;
        let [kind, dir, options] = <[Vec<u8>; 3]>::try_from(parts).ok()?;
        (kind == b"view").then_some(())?;
        Some(Self {
            dir: PathBuf::from(std::ffi::OsString::from_vec(dir)),
            options: String::from_utf8(options).ok()?,
            fd: k.fd,
        })
    }
}

impl Mounts {
    /// `control` serves the control files (`ctl`, `mem`, `regs`, `wait`, …); without it they
    /// answer EOPNOTSUPP.
    pub fn new(
        state: State,
        host: Host,
        rt: tokio::runtime::Handle,
        control: Option<(crate::control::Control, crate::control::wait::Waiter)>,
    ) -> Self {
        Self {
            state,
            host,
            rt,
            control: control.map(|(control, waiter)| fuse::ControlFiles { control, waiter }),
            live: Mutex::new(BTreeMap::new()),
            keep: None,
        }
    }

    /// Keeps every view's connection in `holder`, so that it outlives this agent; `scratch`
    /// is a directory of the agent's own where a connection taken over is handshaken.
    pub fn keep_in(mut self, holder: Arc<Holder>, scratch: PathBuf) -> Self {
        self.keep = Some((holder, scratch));
        self
    }

    /// Mounts a view at `dir` and returns once it answers. A dead FUSE mount left there by a
    /// killed agent is detached first.
    pub fn mount(&self, dir: &Path, opts: MountOptions) -> Result<(), MountError> {
        let dir = std::path::absolute(dir).map_err(|e| MountError::Io(dir.into(), e))?;
        self.reap();
        let mut live = self.live.lock().expect("mount table lock");
        if live.contains_key(&dir) {
            return Err(MountError::Busy(dir));
        }
        recover_stale(&dir);
        let meta = std::fs::metadata(&dir).map_err(|e| MountError::Io(dir.clone(), e))?;
        if !meta.is_dir() {
            return Err(MountError::Io(
                dir.clone(),
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let text = opts.text.clone();
        let leaving = Arc::default();
        let fs = self.view(&dir, &opts, &leaving)?;
        let config = fuser_config(&opts);
        let mut kept = None;
        let session = if opts.uring {
            fuse::uring::Session::mount(fs, &dir, opts.allow_other, opts.read_only)
                .map(Transport::Uring)
                .map_err(|e| MountError::Io(dir.clone(), e))?
        } else {
            let invalidator = fs.invalidator();
            let session = fuser::Session::new(fs, &dir, &config)
                .map_err(|e| MountError::Io(dir.clone(), e))?;
            kept = self.kept(&dir, &text, session.as_fd().try_clone_to_owned());
            let session = session
                .spawn()
                .map_err(|e| MountError::Io(dir.clone(), e))?;
            if let Some(invalidator) = invalidator {
                invalidator.spawn(session.notifier());
            }
            Transport::Fuser(session)
        };
        tracing::info!(dir = %dir.display(), options = %text, "mounted proc view");
        live.insert(
            dir,
            Mounted {
                session,
                options: text,
                kept,
                leaving,
            },
        );
        Ok(())
    }

    /// The view of `opts` for the mount at `dir`.
    fn view(
        &self,
        dir: &Path,
        opts: &MountOptions,
        leaving: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<fuse::ProcFs, MountError> {
        let table = Arc::new(processes::Live {
            state: self.state.clone(),
            rt: self.rt.clone(),
            leaving: leaving.clone(),
        });
        fuse::ProcFs::new(
            table,
            self.host,
            self.rt.clone(),
            opts.clone(),
            self.control.clone(),
        )
        .map_err(|e| MountError::Io(dir.into(), e))
    }

    /// Keeps the connection `fd` of the view at `dir` outside the agent, if it is kept at all;
    /// returns what `Mounted::kept` holds. A view that cannot be kept still serves.
    fn kept(
        &self,
        dir: &Path,
        options: &str,
        fd: std::io::Result<OwnedFd>,
    ) -> Option<(String, OwnedFd)> {
        let (holder, _) = self.keep.as_ref()?;
        let Some(name) = Handed::name(dir, options) else {
            tracing::warn!(dir = %dir.display(), "mount point and options too long to keep the view across restarts");
            return None;
        };
        let stored = fd.and_then(|fd| holder.store(&name, fd.as_fd()).map(|()| fd));
        match stored {
            Ok(fd) => Some((name, fd)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "the view will not outlive the agent: {e}");
                None
            }
        }
    }

    /// Serves a view another agent mounted, over its connection: the mount stays as it is
    /// (bind mounts of it in other namespaces keep working), and the requests the kernel
    /// queued meanwhile are answered, with those the dead agent had read and not answered
    /// sent again (FUSE_NOTIFY_RESEND). Nothing here touches `h.dir` itself, which would wait
    /// for the connection to be served.
    pub fn adopt(&self, h: Handed) -> Result<(), MountError> {
        let Handed { dir, options, fd } = h;
        let opts = MountOptions::parse(&options)?;
        let mut live = self.live.lock().expect("mount table lock");
        if live.contains_key(&dir) {
            return Err(MountError::Busy(dir));
        }
        let leaving = Arc::default();
        let fs = self.view(&dir, &opts, &leaving)?;
        let invalidator = fs.invalidator();
        let scratch = match &self.keep {
            Some((_, s)) => s.join(format!("handshake-{}", std::process::id())),
            None => std::env::temp_dir().join(format!("bpfproc-handshake-{}", std::process::id())),
        };
        let resend = fd.try_clone().map_err(|e| MountError::Io(dir.clone(), e))?;
        let session = fuse::adopt(fs, fd, &scratch, fuser_config(&opts))
            .and_then(fuser::Session::spawn)
            .map_err(|e| MountError::Io(dir.clone(), e))?;
        if let Some(invalidator) = invalidator {
            invalidator.spawn(session.notifier());
        }
        if let Err(e) = fusewire::notify_resend(&resend) {
            tracing::warn!(dir = %dir.display(), "requests the previous agent had read may wait for ever (FUSE_NOTIFY_RESEND: {e})");
        }
        let kept = self.kept(&dir, &options, Ok(resend));
        tracing::info!(dir = %dir.display(), options = %options, "took over proc view");
        live.insert(
            dir.clone(),
            Mounted {
                session: Transport::Adopted(session, dir),
                options,
                kept,
                leaving,
            },
        );
        Ok(())
    }

    /// Every kept view, for the agent taking over from this one.
    pub fn handed(&self) -> Vec<Handed> {
        self.live
            .lock()
            .expect("mount table lock")
            .iter()
            .filter_map(|(dir, m)| {
                let (_, fd) = m.kept.as_ref()?;
                Some(Handed {
                    dir: dir.clone(),
                    options: m.options.clone(),
                    fd: fd.try_clone().ok()?,
                })
            })
            .collect()
    }

    /// The agent leaves its views to the next one, before its table goes: kept views stay
    /// mounted and are left to whoever holds their connections (their serving threads end
    /// with the process, and what they cannot answer is sent again to the next agent); the
    /// others are unmounted as `unmount_all` does.
    pub fn leave(&self) {
        let kept = take_where(&mut self.live.lock().expect("mount table lock"), |m| {
            m.kept.is_some()
        });
        for (dir, m) in kept {
            m.leaving.store(true, std::sync::atomic::Ordering::Release);
            // Dropping the session would unmount the view.
            std::mem::forget(m.session);
            tracing::info!(dir = %dir.display(), "left proc view to the next agent");
        }
        self.unmount_all();
    }

    /// Forgets the kept connection of the view at `dir` (it was unmounted).
    fn unkeep(&self, dir: &Path, m: &Mounted) {
        if let (Some((holder, _)), Some((name, _))) = (&self.keep, &m.kept)
            && let Err(e) = holder.remove(name)
        {
            tracing::warn!(dir = %dir.display(), "forgetting the kept view: {e}");
        }
    }
}

/// fuser's settings for a view with options `opts`.
fn fuser_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("bpfproc".into()),
        MountOption::Subtype("bpfproc".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
    ];
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    // A never-stale mount checks modes and owners itself (fs/access.rs), which spares a
    // GETATTR round trip per path component and per open. A cache= mount never sees the
    // opens (the kernel serves them), so the kernel checks, from attributes it caches.
    if opts.cache.is_some() {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(2);
    config
}

impl Mounts {
    pub fn umount(&self, dir: &Path) -> Result<(), MountError> {
        let dir = std::path::absolute(dir).map_err(|e| MountError::Io(dir.into(), e))?;
        let m = self
            .live
            .lock()
            .expect("mount table lock")
            .remove(&dir)
            .ok_or_else(|| MountError::NotMounted(dir.clone()))?;
        self.unkeep(&dir, &m);
        // A mount namespace created while the view was mounted (a container, `unshare -m`)
        // holds a copy of it, which keeps the FUSE connection, and so the session's threads,
        // alive after our unmount: the join would wait for that namespace to end. A view that
        // is unmounted is over, so if the join does not return promptly, the connection is
        // aborted (those copies then answer ENOTCONN, as a killed agent's would).
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = connection_dir(&dir).map(|conn| {
            std::thread::spawn(move || {
                if finished.recv_timeout(UNMOUNT_GRACE).is_err() {
                    let aborted = std::fs::write(conn.join("abort"), "1");
                    tracing::warn!(
                        connection = %conn.display(),
                        ?aborted,
                        "proc view still held by another mount namespace; aborted its connection"
                    );
                }
            })
        });
        let result = m.session.umount_and_join();
        let _ = done.send(());
        if let Some(w) = watchdog {
            let _ = w.join();
        }
        result.map_err(|e| MountError::Io(dir.clone(), e))?;
        tracing::info!(dir = %dir.display(), "unmounted proc view");
        Ok(())
    }

    /// (mount point, options) of every live mount.
    pub fn list(&self) -> Vec<(PathBuf, String)> {
        self.reap();
        self.live
            .lock()
            .expect("mount table lock")
            .iter()
            .map(|(d, m)| (d.clone(), m.options.clone()))
            .collect()
    }

    pub fn unmount_all(&self) {
        let all: Vec<PathBuf> = self
            .live
            .lock()
            .expect("mount table lock")
            .keys()
            .cloned()
            .collect();
        for dir in all {
            if let Err(e) = self.umount(&dir) {
                // Busy (a file still open in it): the agent is leaving, and a mount left behind
                // would answer ENOTCONN until someone cleaned it up. Detach it instead: open
                // files fail from now on, and the mount point is a plain directory again.
                let detached = detach(&dir);
                tracing::warn!(
                    "unmounting {}: {e}; detached it instead ({detached:?})",
                    dir.display()
                );
            }
        }
    }

    /// Forgets mounts someone removed from outside (`umount DIR`, `fusermount3 -u DIR`).
    fn reap(&self) {
        let gone = take_where(&mut self.live.lock().expect("mount table lock"), |m| {
            m.session.is_finished()
        });
        for (d, m) in gone {
            self.unkeep(&d, &m);
            tracing::info!(dir = %d.display(), "proc view was unmounted from outside");
        }
    }
}

/// Removes and returns the mounts for which `pred` holds.
fn take_where(
    live: &mut BTreeMap<PathBuf, Mounted>,
    pred: impl Fn(&Mounted) -> bool,
) -> Vec<(PathBuf, Mounted)> {
    let dirs: Vec<PathBuf> = live
        .iter()
        .filter(|(_, m)| pred(m))
        .map(|(d, _)| d.clone())
        .collect();
    dirs.into_iter()
        .filter_map(|d| live.remove(&d).map(|m| (d, m)))
        .collect()
}

/// How long an unmount waits for other mount namespaces to let go of a view.
const UNMOUNT_GRACE: Duration = Duration::from_secs(1);

/// The fusectl directory of the FUSE connection mounted at `dir` (named after the mount's
/// anonymous device number), mounting fusectl first if nobody has.
fn connection_dir(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    const FUSECTL: &str = "/sys/fs/fuse/connections";
    let dev = std::fs::metadata(dir).ok()?.dev();
    if major(dev) != 0 {
        return None;
    }
    let conn = Path::new(FUSECTL).join(minor(dev).to_string());
    if !conn.exists() {
        // Our own mount is a connection, so an empty directory means fusectl is not mounted.
        let r = mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            MsFlags::empty(),
            None::<&str>,
        );
        tracing::debug!(?r, "mounted fusectl");
    }
    conn.exists().then_some(conn)
}

/// A FUSE mount whose daemon died answers every access with ENOTCONN; detach it so the next
/// mount can take its place without manual clean-up.
fn recover_stale(dir: &Path) {
    if let Err(e) = std::fs::metadata(dir)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        let r = detach(dir);
        tracing::info!(dir = %dir.display(), ?r, "detached a stale mount left by a previous agent");
    }
}

/// Lazily unmounts `dir` (MNT_DETACH): it leaves the namespace now, and what still has files
/// open in it sees them fail.
fn detach(dir: &Path) -> nix::Result<()> {
    umount2(dir, MntFlags::MNT_DETACH)
}

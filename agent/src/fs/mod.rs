//! FUSE mounts of the proc view: any number, each with its own options, all served from the one
//! process table. `Mounts` owns them; the control socket and `--mount` drive it.

mod bsd;
mod fuse;
pub mod options;
pub mod tree;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use fuser::{Config, MountOption, SessionACL};

pub use options::MountOptions;

/// FUSE requests answered by every mount of this agent (for `/v1/stats` and the benchmarks:
/// round trips are what a view costs).
pub static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_request() {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The ids of the cgroup v2 subtree at `path` (a path inside the hierarchy, or one relative to
/// its root), as the HTTP API's `?cgroup=` filter matches them.
pub fn cgroup_subtree(path: &Path) -> std::io::Result<std::collections::HashSet<u64>> {
    let base = fuse::cgroup2_root()?;
    let root = if path.starts_with(&base) {
        path.to_path_buf()
    } else {
        base.join(path.strip_prefix("/").unwrap_or(path))
    };
    if !root.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cgroup {} does not exist", root.display()),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    fuse::collect_cgroup_ids(&root, &mut ids);
    Ok(ids)
}

use crate::{state::State, view::Host};

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
    session: fuser::BackgroundSession,
    options: String,
}

pub struct Mounts {
    state: State,
    host: Host,
    rt: tokio::runtime::Handle,
    control: Option<fuse::ControlFiles>,
    live: Mutex<BTreeMap<PathBuf, Mounted>>,
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
        }
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
        let fs = fuse::ProcFs::new(
            self.state.clone(),
            self.host,
            self.rt.clone(),
            opts.clone(),
            self.control.clone(),
        )
        .map_err(|e| MountError::Io(dir.clone(), e))?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("bpfproc".into()),
            MountOption::Subtype("bpfproc".into()),
            // The kernel checks modes and owners against the caller, as on procfs.
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
        ];
        config.acl = if opts.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(2);
        let session = fuser::Session::new(fs, &dir, &config)
            .and_then(fuser::Session::spawn)
            .map_err(|e| MountError::Io(dir.clone(), e))?;
        tracing::info!(dir = %dir.display(), options = %text, "mounted proc view");
        live.insert(
            dir,
            Mounted {
                session,
                options: text,
            },
        );
        Ok(())
    }

    pub fn umount(&self, dir: &Path) -> Result<(), MountError> {
        let dir = std::path::absolute(dir).map_err(|e| MountError::Io(dir.into(), e))?;
        let m = self
            .live
            .lock()
            .expect("mount table lock")
            .remove(&dir)
            .ok_or_else(|| MountError::NotMounted(dir.clone()))?;
        m.session
            .umount_and_join()
            .map_err(|e| MountError::Io(dir.clone(), e))?;
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
                tracing::warn!("unmounting {}: {e}", dir.display());
            }
        }
    }

    /// Forgets mounts someone removed from outside (`umount DIR`, `fusermount3 -u DIR`).
    fn reap(&self) {
        let mut live = self.live.lock().expect("mount table lock");
        let gone: Vec<PathBuf> = live
            .iter()
            .filter(|(_, m)| m.session.guard.is_finished())
            .map(|(d, _)| d.clone())
            .collect();
        for d in gone {
            live.remove(&d);
            tracing::info!(dir = %d.display(), "proc view was unmounted from outside");
        }
    }
}

/// A FUSE mount whose daemon died answers every access with ENOTCONN; detach it so the next
/// mount can take its place without manual clean-up.
fn recover_stale(dir: &Path) {
    if let Err(e) = std::fs::metadata(dir)
        && e.raw_os_error() == Some(libc::ENOTCONN)
        && let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
    {
        // SAFETY: valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        tracing::info!(dir = %dir.display(), rc, "detached a stale mount left by a previous agent");
    }
}

//! The FreeBSD (procfs(5)) and NetBSD/OpenBSD (mount_procfs(8)) personalities' side of the
//! FUSE views beyond their show functions (fs/show.rs): the links with their manuals' rules
//! (FreeBSD's `file` is `unknown` when the executable cannot be found; NetBSD's `cwd` and
//! `root` are `/` when unavailable or outside the caller's root), and FreeBSD's ownership
//! (every node the process's real user and group, `mem` group kmem). The tables are
//! `FREEBSD_FILES`, `NETBSD_FILES`, `FREEBSD_ROOT` and `NETBSD_ROOT` in tree.rs; the text is
//! `view::freebsd` and `view::netbsd`.

use std::{os::unix::ffi::OsStrExt as _, sync::OnceLock};

use fuser::Errno;

use super::{
    kernel_files::{errno, same_process},
    tree::{BsdLink, ControlFile, Entry, Kind},
};
use crate::{table::Process, view::ViewError};

/// The target of a link. Links are readable by root and by the process's own user only: Linux
/// gives the targets of a process's `exe`, `cwd` and `root` to whoever may ptrace-read it, and
/// the agent, which runs as root, must not show more than the kernel would.
pub fn readlink(
    p: &Process,
    caller_uid: u32,
    caller_pid: u32,
    link: BsdLink,
) -> Result<Vec<u8>, Errno> {
    let t = p.leader();
    let (uid, euid) = t.map_or((p.uid, p.euid), |t| (t.uid, t.euid));
    if caller_uid != 0 && (caller_uid != uid || caller_uid != euid) {
        return Err(Errno::EACCES);
    }
    let kernel = |name: &str| {
        let target = std::fs::read_link(format!("/proc/{}/{name}", p.pid));
        same_process(p).map_err(|e| errno(&e))?;
        Ok::<_, Errno>(target.map(|t| t.as_os_str().as_bytes().to_vec()))
    };
    match link {
        BsdLink::Exe => kernel("exe")?.map_err(|e| errno(&ViewError::Io(e))),
        BsdLink::FreeBsdFile => Ok(freebsd_file(kernel("exe")?.ok())),
        BsdLink::Cwd | BsdLink::Root => {
            let name = if link == BsdLink::Cwd { "cwd" } else { "root" };
            let target = kernel(name)?.ok();
            let caller_root = std::fs::read_link(format!("/proc/{caller_pid}/root"))
                .ok()
                .map(|r| r.as_os_str().as_bytes().to_vec());
            Ok(netbsd_dir(target, caller_root.as_deref()))
        }
    }
}

/// Linux marks an executable that was removed or replaced `… (deleted)`; FreeBSD's name
/// lookup for it would fail, and so would one for a process with no executable (a kernel
/// thread): both are FreeBSD's `unknown`.
fn freebsd_file(exe: Option<Vec<u8>>) -> Vec<u8> {
    match exe {
        Some(t) if !t.ends_with(b" (deleted)") => t,
        _ => b"unknown".to_vec(),
    }
}

/// NetBSD's rule for `cwd` and `root`: the directory as the caller names it from its own root,
/// or `/` if it is not available (gone, removed) or not at or below the caller's root.
fn netbsd_dir(target: Option<Vec<u8>>, caller_root: Option<&[u8]>) -> Vec<u8> {
    let Some(t) = target.filter(|t| t.starts_with(b"/") && !t.ends_with(b" (deleted)")) else {
        return b"/".to_vec();
    };
    match caller_root {
        None | Some(b"/") => t,
        Some(root) => match t.strip_prefix(root) {
            Some([]) => b"/".to_vec(),
            Some(rest) if rest.starts_with(b"/") => rest.to_vec(),
            _ => b"/".to_vec(),
        },
    }
}

/// Who owns a process's node (`e`, or the directory itself), where the personality says
/// otherwise than Linux's effective ids: FreeBSD's nodes belong to the process's real user and
/// group (pseudofs's `cr_ruid`/`cr_rgid`; the manual's "the process's user … that user's
/// primary group"), and `mem` to group kmem if the group database has one (else the process's group).
pub fn freebsd_owner(p: &Process, e: Option<&Entry>) -> (u32, u32) {
    let (uid, gid) = p.leader().map_or((p.uid, p.gid), |t| (t.uid, t.gid));
    let mem = e.is_some_and(|e| matches!(e.kind, Kind::Control(ControlFile::Mem)));
    (uid, if mem { kmem_gid().unwrap_or(gid) } else { gid })
}

/// The kmem group's id, looked up once.
fn kmem_gid() -> Option<u32> {
    static KMEM: OnceLock<Option<u32>> = OnceLock::new();
    *KMEM.get_or_init(|| crate::sys::users::gid("kmem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freebsd_file_is_unknown_when_the_executable_cannot_be_found() {
        assert_eq!(
            freebsd_file(Some(b"/usr/bin/sleep".to_vec())),
            b"/usr/bin/sleep"
        );
        assert_eq!(
            freebsd_file(Some(b"/tmp/a.out (deleted)".to_vec())),
            b"unknown"
        );
        assert_eq!(freebsd_file(None), b"unknown");
    }

    #[test]
    fn netbsd_dirs_are_relative_to_the_callers_root() {
        let d = |t: Option<&[u8]>, root: Option<&[u8]>| {
            String::from_utf8(netbsd_dir(t.map(<[u8]>::to_vec), root)).unwrap()
        };
        assert_eq!(d(Some(b"/home/u"), Some(b"/")), "/home/u");
        assert_eq!(d(Some(b"/home/u"), None), "/home/u");
        assert_eq!(d(Some(b"/srv/jail/tmp"), Some(b"/srv/jail")), "/tmp");
        assert_eq!(d(Some(b"/srv/jail"), Some(b"/srv/jail")), "/");
        assert_eq!(
            d(Some(b"/srv/jailbreak"), Some(b"/srv/jail")),
            "/",
            "a sibling is not below the root"
        );
        assert_eq!(d(Some(b"/etc"), Some(b"/srv/jail")), "/");
        assert_eq!(d(Some(b"/tmp/gone (deleted)"), Some(b"/")), "/");
        assert_eq!(d(None, Some(b"/")), "/");
    }
}

//! A personality as one value: its per-process files, its root, which of those are the
//! Linux-compatible extras `-o nolinux` hides, who owns its nodes, and the control requests it
//! takes as ioctls. A mount picks its descriptor once; nothing else asks which personality it
//! is. Adding one is a descriptor here, its tables in tree.rs and its renderers in `view`.

use super::{
    bsd,
    options::{MountOptions, Personality},
    tree::{self, Entry, Global},
};
use crate::table::Process;

/// What a personality's control requests arrive as (FUSE forwards ioctl(2), not fcntl(2) or
/// QNX's devctl()).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ioctls {
    None,
    /// SVR4's PFC* on a process file (fs/fuse/svr4.rs).
    Svr4,
    /// QNX's devctls on `ctl` (fs/fuse/qnx.rs).
    Qnx,
}

/// A node's (uid, gid): the process's, and the entry (`None` for the directory).
pub type Owner = fn(&Process, Option<&Entry>) -> (u32, u32);

pub struct Descriptor {
    pub personality: Personality,
    /// `/PID/…`; empty when a process is one file at the root (`pid_files`). A function, as
    /// Linux's has every entry of the running kernel (`tree::linux_files`).
    pub files: fn() -> &'static [Entry],
    /// The root's nodes besides the processes.
    pub root: &'static [Global],
    /// A process is a five-digit file at the root (SVR4), not a directory.
    pub pid_files: bool,
    /// How many rows at the end of (`root`, `files`) are Linux-compatible nodes.
    pub linux_rows: (usize, usize),
    /// Who owns a process's node (the entry, or the directory itself) where the manual says
    /// otherwise than Linux's effective ids.
    pub owner: Option<Owner>,
    pub ioctls: Ioctls,
    /// `as` and `ctl` keep modes of their own, which chmod may only lower (QNX).
    pub own_modes: bool,
    /// The root serves every entry of the kernel's /proc it has no row for (Linux).
    pub kernel_root: bool,
}

const LINUX: Descriptor = Descriptor {
    personality: Personality::Linux,
    files: tree::linux_files,
    root: tree::GLOBALS,
    pid_files: false,
    linux_rows: (tree::GLOBALS.len(), 0),
    owner: None,
    ioctls: Ioctls::None,
    own_modes: false,
    kernel_root: true,
};

const PLAN9: Descriptor = Descriptor {
    personality: Personality::Plan9,
    files: || tree::PLAN9_FILES,
    root: &[],
    linux_rows: (0, 0),
    kernel_root: false,
    ..LINUX
};

const SVR4: Descriptor = Descriptor {
    personality: Personality::Svr4,
    files: || &[],
    root: &[],
    pid_files: true,
    linux_rows: (0, 0),
    ioctls: Ioctls::Svr4,
    kernel_root: false,
    ..LINUX
};

const QNX: Descriptor = Descriptor {
    personality: Personality::Qnx,
    files: || tree::QNX_FILES,
    root: &[],
    linux_rows: (0, 0),
    ioctls: Ioctls::Qnx,
    own_modes: true,
    kernel_root: false,
    ..LINUX
};

const FREEBSD: Descriptor = Descriptor {
    personality: Personality::FreeBsd,
    files: || tree::FREEBSD_FILES,
    root: tree::FREEBSD_ROOT,
    linux_rows: (0, 0),
    owner: Some(bsd::freebsd_owner),
    kernel_root: false,
    ..LINUX
};

const NETBSD: Descriptor = Descriptor {
    personality: Personality::NetBsd,
    files: || tree::NETBSD_FILES,
    root: tree::NETBSD_ROOT,
    linux_rows: (tree::NETBSD_ROOT_LINUX, tree::NETBSD_LINUX_FILES),
    kernel_root: false,
    ..LINUX
};

pub fn descriptor(p: Personality) -> &'static Descriptor {
    match p {
        Personality::Linux => &LINUX,
        Personality::Plan9 => &PLAN9,
        Personality::Svr4 => &SVR4,
        Personality::Qnx => &QNX,
        Personality::FreeBsd => &FREEBSD,
        Personality::NetBsd => &NETBSD,
    }
}

impl Descriptor {
    /// The root table a mount with these options shows.
    pub fn root_shown(&self, o: &MountOptions) -> &'static [Global] {
        let hidden = if o.nolinux { self.linux_rows.0 } else { 0 };
        &self.root[..self.root.len().saturating_sub(hidden)]
    }

    /// The per-process table a mount with these options shows.
    pub fn files_shown(&self, o: &MountOptions) -> &'static [Entry] {
        let files = (self.files)();
        let hidden = if o.nolinux { self.linux_rows.1 } else { 0 };
        &files[..files.len().saturating_sub(hidden)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_personality_has_the_descriptor_of_its_name() {
        for p in [
            Personality::Linux,
            Personality::Plan9,
            Personality::Svr4,
            Personality::Qnx,
            Personality::FreeBsd,
            Personality::NetBsd,
        ] {
            let d = descriptor(p);
            assert_eq!(d.personality, p);
            let files = (d.files)();
            assert!(d.linux_rows.0 <= d.root.len() && d.linux_rows.1 <= files.len());
            assert_eq!(d.pid_files, files.is_empty(), "{p:?}");
        }
    }
}

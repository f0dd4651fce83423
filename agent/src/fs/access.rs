//! Who may do what to a node, decided by the agent instead of the kernel's
//! `default_permissions`.
//!
//! With `default_permissions` the kernel asks for fresh attributes (a GETATTR round trip, since
//! attributes are never cached) for every directory a path walks through and for every file it
//! opens: two thirds of the FUSE requests `ps` caused. Deciding here, from the attributes the
//! agent already has, gives the same answers as procfs's mode checks for a fraction of the
//! requests. Root (uid 0) passes every read/write check, as with CAP_DAC_OVERRIDE; execute
//! needs an x bit somewhere, as in the kernel's `generic_permission`.

use fuser::{Errno, FileAttr, FileType};

pub const READ: u16 = 4;
pub const WRITE: u16 = 2;
pub const EXEC: u16 = 1;

/// The caller as FUSE reports it: its filesystem uid and gid.
#[derive(Clone, Copy, Debug)]
pub struct Who {
    pub uid: u32,
    pub gid: u32,
}

/// The permission bits (rwx, 0..=7) that apply to `who` on a node with `attr`.
/// `groups` is asked for only when the answer depends on supplementary groups.
fn class_bits(who: Who, attr: &FileAttr, groups: impl FnOnce() -> Vec<u32>) -> u16 {
    let perm = attr.perm;
    if who.uid == attr.uid {
        return (perm >> 6) & 7;
    }
    let (group, other) = ((perm >> 3) & 7, perm & 7);
    if group == other {
        return other;
    }
    if who.gid == attr.gid || groups().contains(&attr.gid) {
        group
    } else {
        other
    }
}

/// `generic_permission` for `mask` (a combination of READ, WRITE, EXEC).
pub fn check(
    who: Who,
    attr: &FileAttr,
    mask: u16,
    groups: impl FnOnce() -> Vec<u32>,
) -> Result<(), Errno> {
    if who.uid == 0 {
        let exec_ok =
            mask & EXEC == 0 || attr.kind == FileType::Directory || attr.perm & 0o111 != 0;
        return if exec_ok { Ok(()) } else { Err(Errno::EACCES) };
    }
    if class_bits(who, attr, groups) & mask == mask {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// The supplementary groups of a thread, from the kernel's status file (empty if it is gone:
/// a caller that exited mid-request gains nothing from it).
pub fn groups_of(tid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .map(|s| crate::sys::privs::Creds::parse(&s, 0, 0).groups)
        .unwrap_or_default()
}

/// The access an open(2) asks for.
pub fn open_mask(mode: fuser::OpenAccMode) -> u16 {
    match mode {
        fuser::OpenAccMode::O_RDONLY => READ,
        fuser::OpenAccMode::O_WRONLY => WRITE,
        fuser::OpenAccMode::O_RDWR => READ | WRITE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn attr(kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
        FileAttr {
            ino: fuser::INodeNo(2),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            blksize: 1024,
            flags: 0,
        }
    }

    fn who(uid: u32, gid: u32) -> Who {
        Who { uid, gid }
    }

    const NO_GROUPS: fn() -> Vec<u32> = Vec::new;

    #[test]
    fn owner_only_files_refuse_other_users() {
        let environ = attr(FileType::RegularFile, 0o400, 1000, 1000);
        assert!(check(who(1000, 1000), &environ, READ, NO_GROUPS).is_ok());
        assert_eq!(
            check(who(1001, 1000), &environ, READ, NO_GROUPS),
            Err(Errno::EACCES),
            "sharing the primary group grants nothing on a 0400 file"
        );
        assert_eq!(
            check(who(1000, 1000), &environ, WRITE, NO_GROUPS),
            Err(Errno::EACCES)
        );
        assert!(check(who(0, 0), &environ, READ | WRITE, NO_GROUPS).is_ok());
    }

    #[test]
    fn directories_need_exec_to_walk_and_read_to_list() {
        let fd_dir = attr(FileType::Directory, 0o500, 1000, 1000);
        assert!(check(who(1000, 1000), &fd_dir, EXEC | READ, NO_GROUPS).is_ok());
        assert_eq!(
            check(who(7, 7), &fd_dir, EXEC, NO_GROUPS),
            Err(Errno::EACCES)
        );
        assert!(check(who(0, 0), &fd_dir, EXEC, NO_GROUPS).is_ok());
        let pid_dir = attr(FileType::Directory, 0o555, 1000, 1000);
        assert!(check(who(7, 7), &pid_dir, EXEC | READ, NO_GROUPS).is_ok());
    }

    #[test]
    fn root_needs_an_exec_bit_on_files() {
        let stat = attr(FileType::RegularFile, 0o444, 0, 0);
        assert_eq!(check(who(0, 0), &stat, EXEC, NO_GROUPS), Err(Errno::EACCES));
    }

    #[test]
    fn supplementary_groups_are_read_only_when_they_matter() {
        let kmem_mem = attr(FileType::RegularFile, 0o640, 1000, 15);
        let asked = std::cell::Cell::new(false);
        let groups = || {
            asked.set(true);
            vec![15]
        };
        assert!(check(who(7, 7), &kmem_mem, READ, groups).is_ok());
        assert!(asked.get());
        assert_eq!(
            check(who(7, 7), &kmem_mem, READ, NO_GROUPS),
            Err(Errno::EACCES)
        );
        let asked = std::cell::Cell::new(false);
        let world = attr(FileType::RegularFile, 0o444, 1000, 15);
        let _ = check(who(7, 7), &world, READ, || {
            asked.set(true);
            Vec::new()
        });
        assert!(
            !asked.get(),
            "group bits equal to other bits need no lookup"
        );
    }

    #[test]
    fn open_flags_map_to_masks() {
        use fuser::OpenAccMode as M;
        assert_eq!(open_mask(M::O_RDONLY), READ);
        assert_eq!(open_mask(M::O_WRONLY), WRITE);
        assert_eq!(open_mask(M::O_RDWR), READ | WRITE);
    }
}

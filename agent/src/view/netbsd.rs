//! NetBSD mount_procfs(8) files that differ from the other personalities: `map` in NetBSD's
//! fields, `cmdline` with NetBSD's rule for system and zombie processes, and `status` (FreeBSD's
//! line without the jail, as NetBSD's manual lists it). `maps` is the Linux file; the Linux
//! nodes `-o linux` adds are the Linux personality's. `docs/personalities/netbsd.md` has the
//! table of what maps one-to-one and what differs.

use std::fmt::Write as _;

use super::{Host, ViewError, freebsd, linux, maps};
use crate::table::Process;

/// NetBSD's `MAP_INHERIT_*` values (sys/mman.h).
const INHERIT_SHARE: u8 = 0;
const INHERIT_COPY: u8 = 1;
const INHERIT_NONE: u8 = 2;
const INHERIT_ZERO: u8 = 4;
/// NetBSD's `UVM_ADV_*` (the `POSIX_MADV_*` numbers).
const ADV_NORMAL: u8 = 0;
const ADV_RANDOM: u8 = 1;
const ADV_SEQUENTIAL: u8 = 2;

/// `/proc/PID/status`: FreeBSD's line without the jail field, which NetBSD does not have.
pub fn status(p: &Process, host: &Host, wchan: &[u8]) -> Result<Vec<u8>, ViewError> {
    freebsd::status_line(p, host, wchan, false)
}

/// `/proc/PID/map` from the process's `smaps` text, one line per region as NetBSD's
/// procfs_map.c writes it (`%#lx %#lx %c%c%c %c%c%c %s %s %d %d %d`): start (inclusive), end
/// (exclusive), protection, max-protection, COW/NCOW, NC/NNC, inheritance, wired count, advice.
///
/// From Linux: max-protection is `VM_MAYREAD/MAYWRITE/MAYEXEC` (smaps `mr mw me`); a private
/// mapping is copy-on-write; it needs a copy while it has no anonymous pages of its own;
/// inheritance is `none` for `MADV_DONTFORK` (`dc`), `zero` for `MADV_WIPEONFORK` (`wf`),
/// else `share` for shared and `copy` for private mappings; the wired count is 1 for an
/// `mlock`ed region (`lo`); advice is `sequential` (`sr`), `random` (`rr`) or `normal`.
/// Every one of these needs smaps' `VmFlags`: plain `maps` text is EOPNOTSUPP rather than a
/// guess.
pub fn map(smaps: &[u8]) -> Result<Vec<u8>, ViewError> {
    let mut s = String::new();
    for r in maps::parse(smaps)? {
        if r.vm_flags.is_none() {
            return Err(ViewError::Unsupported("NetBSD map needs smaps VmFlags"));
        }
        let bit = |on: bool, c: char| if on { c } else { '-' };
        let inherit = if r.has_flag(b"dc") {
            INHERIT_NONE
        } else if r.has_flag(b"wf") {
            INHERIT_ZERO
        } else if r.shared {
            INHERIT_SHARE
        } else {
            INHERIT_COPY
        };
        let advice = if r.has_flag(b"sr") {
            ADV_SEQUENTIAL
        } else if r.has_flag(b"rr") {
            ADV_RANDOM
        } else {
            ADV_NORMAL
        };
        let _ = writeln!(
            s,
            "{} {} {}{}{} {}{}{} {} {} {} {} {}",
            c_alt_hex(r.start),
            c_alt_hex(r.end),
            bit(r.read, 'r'),
            bit(r.write, 'w'),
            bit(r.exec, 'x'),
            bit(r.has_flag(b"mr"), 'r'),
            bit(r.has_flag(b"mw"), 'w'),
            bit(r.has_flag(b"me"), 'x'),
            if r.shared { "NCOW" } else { "COW" },
            if freebsd::needs_copy(&r) { "NC" } else { "NNC" },
            inherit,
            u8::from(r.has_flag(b"lo")),
            advice,
        );
    }
    Ok(s.into_bytes())
}

/// C's `%#lx`: `0x` and the digits, but a bare `0` for zero.
fn c_alt_hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// `/proc/PID/cmdline`: the arguments, NUL-terminated; "for a system or zombie process, this
/// file contains only a string with the name of the process".
pub fn cmdline(p: &Process) -> Result<Vec<u8>, ViewError> {
    if p.kthread || p.exit.is_some() {
        let mut name = p.comm.clone();
        name.push(0);
        return Ok(name);
    }
    linux::cmdline(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{
        leader_mut,
        maps::tests::{MAPS, SMAPS},
        test_process,
    };

    #[test]
    fn map_from_smaps_golden() {
        let got = String::from_utf8(map(SMAPS.as_bytes()).unwrap()).unwrap();
        let want = "\
0x55d0c0a00000 0x55d0c0a02000 r-- rwx COW NC 1 0 0
0x55d0c0a02000 0x55d0c0a07000 r-x rwx COW NC 1 0 0
0x55d0c0a09000 0x55d0c0a0a000 rw- rwx COW NNC 1 0 0
0x55d0c0a0a000 0x55d0c0a0b000 rw- rwx COW NNC 1 0 0
0x55d0c1b3e000 0x55d0c1b5f000 rw- rwx COW NNC 1 0 0
0x7f0a1c000000 0x7f0a1c021000 rw- rwx NCOW NNC 2 0 0
0x7f0a1c200000 0x7f0a1c228000 r-- rwx COW NC 1 0 2
0x7ffd4a5e0000 0x7ffd4a601000 rw- rwx COW NNC 1 1 0
0x7ffd4a7e8000 0x7ffd4a7ea000 r-x r-x COW NC 1 0 0
";
        assert_eq!(got, want);
    }

    #[test]
    fn map_inheritance_follows_fork_advice() {
        let one = |flags: &str, perms: &str| {
            let text = format!("1000-2000 {perms} 00000000 00:00 0\nVmFlags: {flags}\n");
            String::from_utf8(map(text.as_bytes()).unwrap()).unwrap()
        };
        assert_eq!(
            one("rd wr mr mw", "rw-s"),
            "0x1000 0x2000 rw- rw- NCOW NNC 0 0 0\n"
        );
        assert_eq!(
            one("rd wr mr mw wf", "rw-p"),
            "0x1000 0x2000 rw- rw- COW NNC 4 0 0\n"
        );
        assert_eq!(
            one("rd mr rr", "r--p"),
            "0x1000 0x2000 r-- r-- COW NNC 1 0 1\n"
        );
    }

    #[test]
    fn map_without_smaps_is_unsupported_not_guessed() {
        assert_eq!(map(MAPS.as_bytes()).unwrap_err().errno(), libc::EOPNOTSUPP);
        assert_eq!(c_alt_hex(0), "0");
    }

    #[test]
    fn status_is_freebsds_without_the_jail() {
        let host = Host {
            boot_epoch_ns: 0,
            clock_ticks: 100,
            page_size: 4096,
        };
        let p = test_process();
        let bsd = String::from_utf8(freebsd::status(&p, &host, b"").unwrap()).unwrap();
        let net = String::from_utf8(status(&p, &host, b"").unwrap()).unwrap();
        assert_eq!(
            net,
            "sleep 4242 4200 4242 4200 -1,-1 noflags 2,0 0,0 0,0 nochan 1000,1000\n"
        );
        assert_eq!(bsd, net.replace('\n', " -\n"));
    }

    #[test]
    fn cmdline_of_a_zombie_or_kernel_thread_is_its_name() {
        let mut p = test_process();
        assert_eq!(cmdline(&p).unwrap(), b"sleep\x001000\x00");
        p.kthread = true;
        p.comm = b"kworker/0:1".to_vec();
        assert_eq!(cmdline(&p).unwrap(), b"kworker/0:1\0");
        let mut z = test_process();
        leader_mut(&mut z).exit_state = 32; // EXIT_ZOMBIE
        z.exit = Some(crate::table::ExitInfo {
            ts: 0,
            status: Some(0),
            utime_ns: 0,
            stime_ns: 0,
        });
        assert_eq!(cmdline(&z).unwrap(), b"sleep\0");
    }
}

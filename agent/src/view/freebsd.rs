//! FreeBSD procfs(5) files rendered from the table: `status`, `map`, `rlimit`, `etype`. Where
//! the manual leaves the bytes open the layout is FreeBSD's `sys/fs/procfs` (`procfs_status.c`,
//! `procfs_map.c`, `procfs_rlimit.c`, `procfs_type.c`). `ctl`, `mem`, `regs`, `fpregs`, `note`
//! and `notepg` are control files (`control/`); `docs/personalities/freebsd.md` has the table of
//! what maps one-to-one and what differs. NetBSD's `status` is this one without the jail.

use std::fmt::Write as _;

use super::{Host, ViewError, maps, process_state};
use crate::table::Process;

/// `/proc/PID/status`: one line, space-separated, as procfs(5) lists the fields.
///
/// `wchan` is the kernel's `/proc/PID/wchan` text (the function the process sleeps in, `0` or
/// empty when it is not sleeping), read by the caller so this stays pure.
pub fn status(p: &Process, host: &Host, wchan: &[u8]) -> Result<Vec<u8>, ViewError> {
    status_line(p, host, wchan, true)
}

/// The line, with FreeBSD's trailing jail field or without it (NetBSD has none).
pub(crate) fn status_line(
    p: &Process,
    host: &Host,
    wchan: &[u8],
    jail: bool,
) -> Result<Vec<u8>, ViewError> {
    let t = p.leader().ok_or(ViewError::NoProcess)?;
    let mut s = String::with_capacity(160);
    escape_comm(&p.comm, &mut s);
    let _ = write!(s, " {} {} {} {} ", p.pid, t.ppid, t.pgid, t.sid);
    // tty_nr is Linux's new_encode_dev(); 0 means no controlling terminal.
    if t.tty_nr != 0 {
        let major = (t.tty_nr >> 8) & 0xfff;
        let minor = (t.tty_nr & 0xff) | ((t.tty_nr >> 12) & 0xfff00);
        let _ = write!(s, "{major},{minor} ");
    } else {
        s.push_str("-1,-1 ");
    }
    let mut flags = Vec::new();
    if t.tty_nr != 0 {
        flags.push("ctty");
    }
    if t.sid == p.pid {
        flags.push("sldr");
    }
    s.push_str(&if flags.is_empty() {
        "noflags".to_string()
    } else {
        flags.join(",")
    });
    let sum = p.totals(&t, true);
    for ns in [host.boot_epoch_ns + p.start_boottime, sum.utime, sum.stime] {
        // `%jd,%ld`: microseconds are not zero-padded.
        let _ = write!(s, " {},{}", ns / 1_000_000_000, ns % 1_000_000_000 / 1000);
    }
    s.push(' ');
    s.push_str(&wait_message(p, wchan));
    let _ = write!(s, " {},{}", t.euid, t.egid);
    for g in t.groups.iter().take(t.ngroups as usize) {
        let _ = write!(s, ",{g}");
    }
    if jail {
        // Linux has no jails; a container is not one (no hostname of its own is known here).
        s.push_str(" -");
    }
    s.push('\n');
    Ok(s.into_bytes())
}

/// procfs_status.c writes the command name with every byte outside `!`..`~`, and `\`, as
/// `\ooo`, so the line always splits on spaces.
fn escape_comm(comm: &[u8], out: &mut String) {
    if comm.is_empty() {
        // Its do-while prints the terminating NUL of an empty name.
        out.push_str("\\000");
    }
    for &b in comm {
        if !(33..=126).contains(&b) || b == b'\\' {
            let _ = write!(out, "\\{b:03o}");
        } else {
            out.push(b as char);
        }
    }
}

/// FreeBSD's wait message: the sleep's `wmesg`, `nochan` when not sleeping, `exiting` once
/// the process has exited. Linux's nearest is the wait channel's function name.
fn wait_message(p: &Process, wchan: &[u8]) -> String {
    if p.exit.is_some() || matches!(process_state(p), 'Z' | 'X') {
        return "exiting".into();
    }
    let w = wchan.trim_ascii();
    if w.is_empty() || w == b"0" || process_state(p) == 'R' {
        return "nochan".into();
    }
    let mut s = String::new();
    escape_comm(w, &mut s);
    s
}

/// `/proc/PID/map` from the process's `smaps` text (plain `maps` is accepted; see below), one
/// line per mapping as procfs_map.c writes it:
/// `0x%lx 0x%lx %d %d %p %s%s%s %d %d 0x%x %s %s %s %s` — start, end, resident pages, private
/// resident pages, VM object, protection, object reference and shadow counts, object flags,
/// COW/NCOW, NC/NNC, object type, path.
///
/// Linux has no VM objects: the object column is `0x0`, its counts `-1` (unknown) and its
/// flags `0x0`. Resident and private-resident pages come from smaps `Rss` and
/// `Private_Clean + Private_Dirty`, `-1` when only `maps` was given. A private mapping needs a
/// copy (NC) while it has no anonymous pages of its own (smaps `Anonymous: 0`), which is when
/// the next write will copy; without smaps NC cannot be seen and NNC is shown.
pub fn map(smaps: &[u8], host: &Host) -> Result<Vec<u8>, ViewError> {
    let mut s = String::new();
    for r in maps::parse(smaps)? {
        let pages = |kb: Option<u64>| kb.map_or(-1, |kb| (kb * 1024 / host.page_size) as i64);
        let _ = writeln!(
            s,
            "{:#x} {:#x} {} {} 0x0 {}{}{} -1 -1 0x0 {} {} {} {}",
            r.start,
            r.end,
            pages(r.rss_kb),
            pages(r.private_kb),
            if r.read { 'r' } else { '-' },
            if r.write { 'w' } else { '-' },
            if r.exec { 'x' } else { '-' },
            if r.shared { "NCOW" } else { "COW" },
            if needs_copy(&r) { "NC" } else { "NNC" },
            object_type(&r),
            if r.is_file() {
                String::from_utf8_lossy(&r.path).into_owned()
            } else {
                "-".into()
            },
        );
    }
    Ok(s.into_bytes())
}

/// Whether the next write to a private region will copy (BSD's "needs copy").
pub(crate) fn needs_copy(r: &maps::Region) -> bool {
    !r.shared && r.anon_kb == Some(0)
}

/// FreeBSD's object type for what backs a Linux mapping: a file is `vnode`, a device node
/// `device`, the kernel's own pages (`[vdso]`, `[vvar]`, `[vsyscall]`, FreeBSD's shared page)
/// `phys`, anonymous memory (including shared anonymous memory, which Linux shows as
/// `/dev/zero (deleted)` or `/SYSV…`) `default`.
fn object_type(r: &maps::Region) -> &'static str {
    let path = r.path.as_slice();
    if path.starts_with(b"/dev/zero") || path.starts_with(b"/SYSV") {
        "default"
    } else if path.starts_with(b"/dev/") {
        "device"
    } else if r.is_file() {
        "vnode"
    } else if path.first() == Some(&b'[') && path != b"[heap]" && path != b"[stack]" {
        "phys"
    } else {
        "default"
    }
}

/// FreeBSD 5's resource names (`rlimit_ident[]`), in its order, with the Linux `RLIMIT_*`
/// index that holds the same limit. Linux has no socket-buffer limit (`sbsize`); no limit
/// applies, which is what -1 says. Linux-only limits (locks, sigpending, msgqueue, nice,
/// rtprio, rttime) have no FreeBSD name and are not listed.
pub const RLIMITS: [(&str, Option<usize>); 11] = [
    ("cpu", Some(0)),
    ("fsize", Some(1)),
    ("data", Some(2)),
    ("stack", Some(3)),
    ("core", Some(4)),
    ("rss", Some(5)),
    ("memlock", Some(8)),
    ("nproc", Some(6)),
    ("nofile", Some(7)),
    ("sbsize", None),
    ("vmem", Some(9)),
];

/// `/proc/PID/rlimit`: `name current max` per line, -1 for infinity (procfs_rlimit.c).
pub fn rlimit(p: &Process) -> Result<Vec<u8>, ViewError> {
    let t = p.leader().ok_or(ViewError::NoProcess)?;
    let value = |v: u64| {
        if v == u64::MAX {
            "-1".to_string()
        } else {
            v.to_string()
        }
    };
    let mut s = String::new();
    for (name, linux) in RLIMITS {
        let (cur, max) = linux.map_or((u64::MAX, u64::MAX), |i| (t.rlim[2 * i], t.rlim[2 * i + 1]));
        let _ = writeln!(s, "{name} {} {}", value(cur), value(max));
    }
    Ok(s.into_bytes())
}

/// `/proc/PID/etype`: FreeBSD prints the process's ABI, its `sysentvec`'s `sv_name`. A Linux
/// process runs the Linux ABI, and FreeBSD's own names for that ABI (its Linux emulation's
/// `sv_name`) are `Linux ELF64` and `Linux ELF32`, chosen by the ELF class of the executable
/// (`elf` is its first bytes, at least the 5-byte ident). A kernel thread has FreeBSD's
/// `null` ABI; anything else (not ELF, or unreadable: `None`) is FreeBSD's `Not Available`.
pub fn etype(p: &Process, elf: Option<&[u8]>) -> Result<Vec<u8>, ViewError> {
    let name = if p.kthread {
        "null"
    } else {
        match elf {
            Some([0x7f, b'E', b'L', b'F', 2, ..]) => "Linux ELF64",
            Some([0x7f, b'E', b'L', b'F', 1, ..]) => "Linux ELF32",
            _ => "Not Available",
        }
    };
    Ok(format!("{name}\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{
        leader_mut,
        maps::tests::{MAPS, SMAPS},
        test_process,
    };

    const HOST: Host = Host {
        boot_epoch_ns: 1_700_000_000_000_000_000,
        clock_ticks: 100,
        page_size: 4096,
    };

    #[test]
    fn status_has_every_field_of_the_manual() {
        let mut p = test_process();
        let mut t = leader_mut(&mut p);
        t.utime = 1_500_000_000;
        t.stime = 2_000_007_000;
        t.sum_exec_runtime = 3_500_007_000;
        t.ngroups = 2;
        t.groups[0] = 4;
        t.groups[1] = 27;
        drop(t);
        // start_boottime is 2 s: 2 s after the boot epoch.
        let got = status(&p, &HOST, b"do_nanosleep\n").unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "sleep 4242 4200 4242 4200 -1,-1 noflags 1700000002,0 1,500000 2,7 do_nanosleep \
             1000,1000,4,27 -\n"
        );
    }

    #[test]
    fn status_shows_the_tty_and_session_leader() {
        let mut p = test_process();
        let mut t = leader_mut(&mut p);
        t.sid = 4242;
        // /dev/pts/3: major 136, minor 3; and a minor above 255 (major 4, minor 300).
        t.tty_nr = (136 << 8) | 3;
        drop(t);
        let got = String::from_utf8(status(&p, &HOST, b"0").unwrap()).unwrap();
        let fields: Vec<&str> = got.split(' ').collect();
        assert_eq!(&fields[4..7], ["4242", "136,3", "ctty,sldr"]);
        assert_eq!(fields[10], "nochan", "a wchan of 0 is no channel");
        leader_mut(&mut p).tty_nr = (300 & 0xff) | (4 << 8) | ((300 & !0xff) << 12);
        let got = String::from_utf8(status(&p, &HOST, b"").unwrap()).unwrap();
        assert_eq!(got.split(' ').nth(5), Some("4,300"));
        leader_mut(&mut p).tty_nr = 0;
        let got = String::from_utf8(status(&p, &HOST, b"").unwrap()).unwrap();
        assert_eq!(got.split(' ').nth(6), Some("sldr"));
    }

    #[test]
    fn status_escapes_the_command_name() {
        let mut p = test_process();
        p.comm = b"my prog\\x".to_vec();
        let got = String::from_utf8(status(&p, &HOST, b"").unwrap()).unwrap();
        assert!(got.starts_with("my\\040prog\\134x 4242 "), "{got}");
        p.exit = Some(crate::table::ExitInfo {
            ts: 0,
            status: Some(0),
            utime_ns: 0,
            stime_ns: 0,
        });
        let got = String::from_utf8(status(&p, &HOST, b"do_exit").unwrap()).unwrap();
        assert!(got.contains(" exiting "), "{got}");
    }

    #[test]
    fn map_from_smaps_golden() {
        let got = String::from_utf8(map(SMAPS.as_bytes(), &HOST).unwrap()).unwrap();
        let want = "\
0x55d0c0a00000 0x55d0c0a02000 2 0 0x0 r-- -1 -1 0x0 COW NC vnode /usr/bin/cat
0x55d0c0a02000 0x55d0c0a07000 5 0 0x0 r-x -1 -1 0x0 COW NC vnode /usr/bin/cat
0x55d0c0a09000 0x55d0c0a0a000 1 1 0x0 rw- -1 -1 0x0 COW NNC vnode /usr/bin/cat
0x55d0c0a0a000 0x55d0c0a0b000 1 1 0x0 rw- -1 -1 0x0 COW NNC default -
0x55d0c1b3e000 0x55d0c1b5f000 2 2 0x0 rw- -1 -1 0x0 COW NNC default -
0x7f0a1c000000 0x7f0a1c021000 0 0 0x0 rw- -1 -1 0x0 NCOW NNC default /dev/zero (deleted)
0x7f0a1c200000 0x7f0a1c228000 40 0 0x0 r-- -1 -1 0x0 COW NC vnode /usr/lib/x86_64-linux-gnu/libc.so.6
0x7ffd4a5e0000 0x7ffd4a601000 3 3 0x0 rw- -1 -1 0x0 COW NNC default -
0x7ffd4a7e8000 0x7ffd4a7ea000 1 0 0x0 r-x -1 -1 0x0 COW NC phys -
";
        assert_eq!(got, want);
    }

    #[test]
    fn map_from_plain_maps_marks_unknowns() {
        let got = String::from_utf8(map(MAPS.as_bytes(), &HOST).unwrap()).unwrap();
        assert_eq!(
            got.lines().next().unwrap(),
            "0x55d0c0a00000 0x55d0c0a02000 -1 -1 0x0 r-- -1 -1 0x0 COW NNC vnode /usr/bin/cat"
        );
        assert_eq!(got.lines().count(), 9);
    }

    #[test]
    fn rlimit_uses_freebsd_names_in_order() {
        let mut p = test_process();
        let mut t = leader_mut(&mut p);
        t.rlim[2 * 7] = 1024; // RLIMIT_NOFILE
        t.rlim[2 * 7 + 1] = 524_288;
        t.rlim[2 * 3] = 8 << 20; // RLIMIT_STACK soft
        t.rlim[2 * 4] = 0; // RLIMIT_CORE
        t.rlim[2 * 4 + 1] = 0;
        t.rlim[2 * 6] = 63_000; // RLIMIT_NPROC
        t.rlim[2 * 6 + 1] = 63_000;
        drop(t);
        let got = String::from_utf8(rlimit(&p).unwrap()).unwrap();
        assert_eq!(
            got,
            "cpu -1 -1\nfsize -1 -1\ndata -1 -1\nstack 8388608 -1\ncore 0 0\nrss -1 -1\n\
             memlock -1 -1\nnproc 63000 63000\nnofile 1024 524288\nsbsize -1 -1\nvmem -1 -1\n"
        );
    }

    #[test]
    fn etype_names_the_abi() {
        let mut p = test_process();
        let elf64 = [0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        let elf32 = [0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
        assert_eq!(etype(&p, Some(&elf64)).unwrap(), b"Linux ELF64\n");
        assert_eq!(etype(&p, Some(&elf32)).unwrap(), b"Linux ELF32\n");
        assert_eq!(etype(&p, Some(b"#!/bin/sh\n")).unwrap(), b"Not Available\n");
        assert_eq!(etype(&p, Some(&elf64[..4])).unwrap(), b"Not Available\n");
        assert_eq!(etype(&p, None).unwrap(), b"Not Available\n");
        p.kthread = true;
        assert_eq!(etype(&p, None).unwrap(), b"null\n");
    }
}

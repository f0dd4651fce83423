//! Linux-format per-process files (proc(5), fs/proc/array.c), byte for byte where the data
//! exists; the README lists the fields that differ.

use std::fmt::Write as _;

use bpfproc_common::TaskRecord;

use super::{Host, ViewError, process_state, state_letter, state_name};
use crate::table::Process;

/// Pages of text, as `VmExe` and statm count them (whole pages spanned by the code segment).
fn text_pages(t: &TaskRecord, host: &Host) -> u64 {
    let page = host.page_size.max(1);
    let end = t.end_code.div_ceil(page) * page;
    end.saturating_sub(t.start_code / page * page) / page
}

fn leader(p: &Process) -> Result<TaskRecord, ViewError> {
    p.leader().ok_or(ViewError::NoProcess)
}

/// Resident pages as stat reports them (central counts, `get_mm_rss`).
fn rss_pages(t: &TaskRecord) -> u64 {
    t.rss_file + t.rss_anon + t.rss_shmem
}

/// Resident pages as status and statm report them (with per-CPU deltas summed).
fn rss_sum(t: &TaskRecord) -> (u64, u64, u64, u64) {
    let [file, anon, swap, shmem] = t.rss_sum;
    (file, anon, swap, shmem)
}

/// `/proc/PID/stat`.
pub fn stat(p: &Process, host: &Host) -> Result<Vec<u8>, ViewError> {
    Ok(stat_line(p, &leader(p)?, true, host))
}

/// `/proc/PID/task/TID/stat`.
pub fn task_stat(p: &Process, tid: u32, host: &Host) -> Result<Vec<u8>, ViewError> {
    let t = p
        .tasks
        .iter()
        .find(|t| t.tid == tid)
        .ok_or(ViewError::NoFile)?;
    Ok(stat_line(p, &t, false, host))
}

fn stat_line(p: &Process, t: &TaskRecord, whole: bool, host: &Host) -> Vec<u8> {
    let sum = p.totals(t, whole);
    let mm = t.has_mm != 0;
    let (cutime, cstime, cmin, cmaj, cgtime) = if whole {
        (t.cutime, t.cstime, t.cmin_flt, t.cmaj_flt, t.cgtime)
    } else {
        (0, 0, 0, 0, 0)
    };
    let state = state_letter(t.state, t.exit_state);
    let mut out = format!("{} (", if whole { t.tgid } else { t.tid }).into_bytes();
    out.extend_from_slice(&if whole {
        p.name()
    } else {
        crate::table::task_name(t)
    });
    let mask = 0x7fff_ffffu64;
    let line = format!(
        ") {state} {ppid} {pgid} {sid} {tty} {tpgid} {flags} {minflt} {cmin} {majflt} {cmaj} \
         {utime} {stime} {cutime} {cstime} {prio} {nice} {threads} 0 {start} {vsize} {rss} {rsslim} \
         {scode} {ecode} {sstack} 0 0 {sig} {blocked} {ign} {caught} {wchan} 0 0 {exit_signal} {cpu} \
         {rtprio} {policy} 0 {gtime} {cgtime} {sdata} {edata} {sbrk} {astart} {aend} {estart} {eend} \
         {exit_code}\n",
        ppid = t.ppid,
        pgid = t.pgid,
        sid = t.sid,
        tty = t.tty_nr,
        tpgid = t.tpgid,
        flags = t.pf_flags,
        minflt = sum.min_flt,
        majflt = sum.maj_flt,
        utime = host.ticks(sum.utime),
        stime = host.ticks(sum.stime),
        cutime = host.ticks(cutime),
        cstime = host.ticks(cstime),
        prio = t.prio - 100,
        nice = t.static_prio - 120,
        threads = t.nr_threads,
        start = host.ticks(t.start_boottime),
        vsize = t.total_vm * host.page_size,
        rss = rss_pages(t),
        rsslim = t.rlim[2 * 5],
        scode = if mm { t.start_code } else { 0 },
        ecode = if mm { t.end_code } else { 0 },
        sstack = if mm { t.start_stack } else { 0 },
        sig = t.sig_pending & mask,
        blocked = t.sig_blocked & mask,
        ign = t.sig_ignored & mask,
        caught = t.sig_caught & mask,
        // 1 when the task is blocked somewhere, as get_wchan() reports it to a permitted reader.
        wchan = u8::from(state != 'R'),
        exit_signal = t.exit_signal,
        cpu = t.cpu,
        rtprio = t.rt_priority,
        policy = t.policy,
        gtime = host.ticks(sum.gtime),
        cgtime = host.ticks(cgtime),
        sdata = if mm { t.start_data } else { 0 },
        edata = if mm { t.end_data } else { 0 },
        sbrk = if mm { t.start_brk } else { 0 },
        astart = if mm { t.arg_start } else { 0 },
        aend = if mm { t.arg_end } else { 0 },
        estart = if mm { t.env_start } else { 0 },
        eend = if mm { t.env_end } else { 0 },
        exit_code = t.exit_code,
    );
    out.extend_from_slice(line.as_bytes());
    out
}

/// `/proc/PID/statm`, in pages.
pub fn statm(p: &Process, host: &Host) -> Result<Vec<u8>, ViewError> {
    let t = leader(p)?;
    let text = text_pages(&t, host);
    let (file, anon, _, shmem) = rss_sum(&t);
    Ok(format!(
        "{} {} {} {} 0 {} 0\n",
        t.total_vm,
        file + anon + shmem,
        file + shmem,
        text,
        t.data_vm + t.stack_vm
    )
    .into_bytes())
}

/// `/proc/PID/cmdline`: NUL-separated argv as captured at exec (or read at backfill).
pub fn cmdline(p: &Process) -> Result<Vec<u8>, ViewError> {
    if p.exit.is_some() {
        // A zombie has no memory to read argv from: procfs's is empty.
        return Ok(Vec::new());
    }
    if p.cmdline_truncated {
        // Longer than the kernel side keeps: the rest is only in the process's memory.
        if let Ok(full) = crate::procfs::read_file(p.pid, "cmdline") {
            return Ok(full);
        }
    }
    Ok(p.cmdline.clone())
}

/// `/proc/PID/comm`.
pub fn comm(p: &Process) -> Result<Vec<u8>, ViewError> {
    let mut out = p.name();
    out.push(b'\n');
    Ok(out)
}

/// `/proc/PID/task/TID/comm`.
pub fn task_comm(p: &Process, tid: u32) -> Result<Vec<u8>, ViewError> {
    let t = p
        .tasks
        .iter()
        .find(|t| t.tid == tid)
        .ok_or(ViewError::NoFile)?;
    let mut out = crate::table::task_name(&t);
    out.push(b'\n');
    Ok(out)
}

/// `/proc/PID/maps` has no BPF source (an `iter/task_vma` walk was no faster): the kernel's own
/// file is read, checked against the identity we serve so a reused pid is never shown.
pub fn maps(p: &Process) -> Result<Vec<u8>, ViewError> {
    let bytes = crate::procfs::read_file(p.pid, "maps")?;
    Ok(bytes)
}

fn escape_name(name: &[u8], out: &mut String) {
    for &b in name {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\\' => out.push_str("\\\\"),
            _ => out.push(b as char),
        }
    }
}

fn kb(pages: u64, host: &Host) -> u64 {
    pages * host.page_size / 1024
}

/// `/proc/PID/status`.
pub fn status(p: &Process, host: &Host) -> Result<Vec<u8>, ViewError> {
    status_of(p, host, &leader(p)?, true)
}

/// `/proc/PID/task/TID/status`.
pub fn task_status(p: &Process, host: &Host, tid: u32) -> Result<Vec<u8>, ViewError> {
    let t = p
        .tasks
        .iter()
        .find(|t| t.tid == tid)
        .ok_or(ViewError::NoFile)?;
    status_of(p, host, &t, t.tid == t.tgid)
}

fn status_of(p: &Process, host: &Host, t: &TaskRecord, whole: bool) -> Result<Vec<u8>, ViewError> {
    let mut s = String::with_capacity(1400);
    s.push_str("Name:\t");
    let name = if whole {
        p.name()
    } else {
        crate::table::task_name(t)
    };
    escape_name(&name, &mut s);
    s.push('\n');
    if t.has_mm != 0 || t.umask != 0 {
        let _ = writeln!(s, "Umask:\t{:04o}", t.umask);
    }
    let state = if whole {
        process_state(p)
    } else {
        state_letter(t.state, t.exit_state)
    };
    let _ = writeln!(s, "State:\t{}", state_name(state));
    let _ = writeln!(s, "Tgid:\t{}", t.tgid);
    let _ = writeln!(s, "Ngid:\t0");
    let _ = writeln!(s, "Pid:\t{}", t.tid);
    let _ = writeln!(s, "PPid:\t{}", t.ppid);
    let _ = writeln!(s, "TracerPid:\t{}", t.tracer_pid);
    let _ = writeln!(s, "Uid:\t{}\t{}\t{}\t{}", t.uid, t.euid, t.suid, t.fsuid);
    let _ = writeln!(s, "Gid:\t{}\t{}\t{}\t{}", t.gid, t.egid, t.sgid, t.fsgid);
    let _ = writeln!(s, "FDSize:\t{}", t.max_fds);
    s.push_str("Groups:\t");
    let groups: Vec<String> = t
        .groups
        .iter()
        .take(t.ngroups as usize)
        .map(u32::to_string)
        .collect();
    s.push_str(&groups.join(" "));
    // Linux always ends the list with a space.
    s.push_str(" \n");
    let _ = writeln!(s, "NStgid:\t{}", t.tgid);
    let _ = writeln!(s, "NSpid:\t{}", t.tid);
    let _ = writeln!(s, "NSpgid:\t{}", t.pgid);
    let _ = writeln!(s, "NSsid:\t{}", t.sid);
    let _ = writeln!(s, "Kthread:\t{}", u8::from(p.kthread));
    if t.has_mm != 0 {
        let (file, anon, swap, shmem) = rss_sum(t);
        let rss = file + anon + shmem;
        let text = text_pages(t, host);
        let lib = t.exec_vm.saturating_sub(text);
        for (name, pages) in [
            ("VmPeak", t.hiwater_vm.max(t.total_vm)),
            ("VmSize", t.total_vm),
            ("VmLck", t.locked_vm),
            ("VmPin", t.pinned_vm),
            ("VmHWM", t.hiwater_rss.max(rss)),
            ("VmRSS", rss),
            ("RssAnon", anon),
            ("RssFile", file),
            ("RssShmem", shmem),
            ("VmData", t.data_vm),
            ("VmStk", t.stack_vm),
            ("VmExe", text),
            ("VmLib", lib),
        ] {
            let _ = writeln!(s, "{name}:\t{:>8} kB", kb(pages, host));
        }
        let _ = writeln!(s, "VmPTE:\t{:>8} kB", t.pgtables_bytes >> 10);
        let _ = writeln!(s, "VmSwap:\t{:>8} kB", kb(swap, host));
    }
    let _ = writeln!(s, "Threads:\t{}", t.nr_threads);
    let _ = writeln!(s, "SigPnd:\t{:016x}", t.sig_pending);
    let _ = writeln!(s, "ShdPnd:\t{:016x}", t.sig_shared_pending);
    let _ = writeln!(s, "SigBlk:\t{:016x}", t.sig_blocked);
    let _ = writeln!(s, "SigIgn:\t{:016x}", t.sig_ignored);
    let _ = writeln!(s, "SigCgt:\t{:016x}", t.sig_caught);
    let _ = writeln!(s, "CapInh:\t{:016x}", t.cap_inheritable);
    let _ = writeln!(s, "CapPrm:\t{:016x}", t.cap_permitted);
    let _ = writeln!(s, "CapEff:\t{:016x}", t.cap_effective);
    let _ = writeln!(s, "CapBnd:\t{:016x}", t.cap_bset);
    let _ = writeln!(s, "CapAmb:\t{:016x}", t.cap_ambient);
    let _ = writeln!(s, "NoNewPrivs:\t{}", t.atomic_flags & 1);
    let _ = writeln!(s, "Seccomp:\t{}", t.seccomp);
    let _ = writeln!(s, "Cpus_allowed:\t{:x}", t.cpus_allowed);
    let _ = writeln!(s, "Cpus_allowed_list:\t{}", cpu_list(t.cpus_allowed));
    let _ = writeln!(s, "voluntary_ctxt_switches:\t{}", t.nvcsw);
    let _ = writeln!(s, "nonvoluntary_ctxt_switches:\t{}", t.nivcsw);
    Ok(s.into_bytes())
}

/// `/proc/PID/limits` from the rlimits the iterator copies.
pub fn limits(p: &Process) -> Result<Vec<u8>, ViewError> {
    const NAMES: [(&str, &str); bpfproc_common::RLIM_NLIMITS] = [
        ("Max cpu time", "seconds"),
        ("Max file size", "bytes"),
        ("Max data size", "bytes"),
        ("Max stack size", "bytes"),
        ("Max core file size", "bytes"),
        ("Max resident set", "bytes"),
        ("Max processes", "processes"),
        ("Max open files", "files"),
        ("Max locked memory", "bytes"),
        ("Max address space", "bytes"),
        ("Max file locks", "locks"),
        ("Max pending signals", "signals"),
        ("Max msgqueue size", "bytes"),
        ("Max nice priority", ""),
        ("Max realtime priority", ""),
        ("Max realtime timeout", "us"),
    ];
    let t = leader(p)?;
    let mut s = format!(
        "{:<25} {:<20} {:<20} {:<10}\n",
        "Limit", "Soft Limit", "Hard Limit", "Units"
    );
    let value = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    for (i, (name, unit)) in NAMES.iter().enumerate() {
        let _ = write!(
            s,
            "{:<25} {:<20} {:<20} ",
            name,
            value(t.rlim[2 * i]),
            value(t.rlim[2 * i + 1])
        );
        if unit.is_empty() {
            s.push('\n');
        } else {
            let _ = writeln!(s, "{unit:<10}");
        }
    }
    Ok(s.into_bytes())
}

/// `0-3,8` style list of set bits.
fn cpu_list(mask: u64) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < 64 {
        if mask & (1 << i) != 0 {
            let start = i;
            while i + 1 < 64 && mask & (1 << (i + 1)) != 0 {
                i += 1;
            }
            if !out.is_empty() {
                out.push(',');
            }
            if start == i {
                let _ = write!(out, "{start}");
            } else {
                let _ = write!(out, "{start}-{i}");
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_compresses_ranges() {
        assert_eq!(cpu_list(0b11), "0-1");
        assert_eq!(cpu_list(0b1011), "0-1,3");
        assert_eq!(cpu_list(1), "0");
    }
}

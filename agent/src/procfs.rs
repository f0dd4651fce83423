//! The few things read from the kernel's /proc: argv and exe of processes that predate the
//! agent (no exec event ever carried them), processes the task iterator cannot see, and files
//! with no BPF source (`maps`). The README lists each.

use std::{fs, path::Path};

use bpfproc_common::TaskRecord;

pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// argv and exe of a live process, as the kernel shows them now.
pub fn identity(pid: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    use std::os::unix::ffi::OsStrExt as _;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec());
    (cmdline, exe)
}

/// The fields of /proc/PID/stat after the command name (state first), if `pid` exists.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    split_stat(&stat).map(|(_, f)| f)
}

/// When `pid` started, in ns since boot, to the clock tick /proc reports (the tick's first ns).
pub fn start_boottime(pid: u32, ns_per_tick: u64) -> Option<u64> {
    let ticks = stat_fields(pid)?.get(19)?.parse::<u64>().ok()?;
    Some(ticks * ns_per_tick.max(1))
}

/// Whether `pid` is alive in the kernel's /proc and started at `since` (ns since boot), to the
/// clock tick /proc reports.
pub fn alive_since(pid: u32, since: u64, ns_per_tick: u64) -> bool {
    let tick = ns_per_tick.max(1);
    start_boottime(pid, tick).map(|s| s / tick) == Some(since / tick)
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z" | "X")))
}

pub fn read_file(pid: u32, name: &str) -> std::io::Result<Vec<u8>> {
    fs::read(Path::new("/proc").join(pid.to_string()).join(name))
}

/// `TaskRecord`s (leader first) for a process the iterator does not return, built from each
/// thread's stat and status under /proc/PID/task. Empty if it is gone.
pub fn records(pid: u32, ns_per_tick: u64) -> Vec<TaskRecord> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_by_key(|&t| (t != pid, t));
    let mut recs: Vec<TaskRecord> = tids
        .into_iter()
        .filter_map(|tid| record(pid, tid, ns_per_tick))
        .collect();
    if let Some(f) = stat_fields(pid) {
        let n = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * ns_per_tick
        };
        carry_group_times(&mut recs, n(14), n(15));
    }
    recs
}

/// Makes the process's totals come out as the kernel's `utime` and `stime` for the whole
/// group (read after the threads'). Threads that already exited count in those but in no
/// thread's file, and the kernel scales each thread's times on its own, so the threads'
/// times do not add up to the group's: summed, their user time can exceed the group's while
/// their system time falls short. The group's numbers become the `prev` that the renderers'
/// `cputime_adjust` never goes below, with the runtime set no higher, so it returns them as
/// they are.
fn carry_group_times(recs: &mut [TaskRecord], utime: u64, stime: u64) {
    if recs.is_empty() {
        return;
    }
    let (ut, st, rt) = recs.iter().fold((0, 0, 0), |a, r| {
        (a.0 + r.utime, a.1 + r.stime, a.2 + r.sum_exec_runtime)
    });
    let group = &mut recs[0];
    group.sig_utime = utime.saturating_sub(ut);
    group.sig_stime = stime.saturating_sub(st);
    group.sig_sum_sched_runtime = (utime + stime).saturating_sub(rt);
    group.sig_prev_utime = utime;
    group.sig_prev_stime = stime;
}

fn record(pid: u32, tid: u32, ns_per_tick: u64) -> Option<TaskRecord> {
    let stat = fs::read(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let (comm, fields) = split_stat(&stat)?;
    let num = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let inum = |i: usize| -> i64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let ids = |key: &str| -> [u32; 4] {
        let mut out = [0; 4];
        if let Some(line) = status.lines().find(|l| l.starts_with(key)) {
            for (slot, v) in out.iter_mut().zip(line[key.len()..].split_whitespace()) {
                *slot = v.parse().unwrap_or(0);
            }
        }
        out
    };
    let [uid, euid, suid, fsuid] = ids("Uid:");
    let [gid, egid, sgid, fsgid] = ids("Gid:");
    // fields[0] is the state; stat field N (1-based, after comm) is fields[N - 3].
    let f = |n: usize| num(n - 3);
    let state = match fields.first().map(String::as_str) {
        Some("R") => 0,
        Some("S") => 1,
        Some("D") => 2,
        Some("T") => 4,
        Some("t") => 8,
        Some("X") => 16,
        Some("Z") => 32,
        Some("P") => 64,
        Some("I") => 0x402,
        _ => 0,
    };
    // SAFETY: TaskRecord is plain integers and arrays; all-zero is a valid value.
    let mut r: TaskRecord = unsafe { std::mem::zeroed() };
    r.tid = tid;
    r.tgid = pid;
    r.ppid = f(4) as u32;
    r.pgid = f(5) as u32;
    r.sid = f(6) as u32;
    r.tty_nr = f(7) as u32;
    r.tpgid = inum(8 - 3) as i32;
    r.pf_flags = f(9) as u32;
    r.state = state;
    r.exit_state = if state == 32 { 32 } else { 0 };
    (r.uid, r.euid, r.suid, r.fsuid) = (uid, euid, suid, fsuid);
    (r.gid, r.egid, r.sgid, r.fsgid) = (gid, egid, sgid, fsgid);
    r.min_flt = f(10);
    r.cmin_flt = f(11);
    r.maj_flt = f(12);
    r.cmaj_flt = f(13);
    r.utime = f(14) * ns_per_tick;
    r.stime = f(15) * ns_per_tick;
    // Already scaled by the kernel: make the renderers' cputime_adjust a no-op.
    r.sum_exec_runtime = r.utime + r.stime;
    r.cutime = f(16) * ns_per_tick;
    r.cstime = f(17) * ns_per_tick;
    r.prio = inum(18 - 3) as i32 + 100;
    r.static_prio = inum(19 - 3) as i32 + 120;
    r.nr_threads = f(20) as u32;
    r.start_boottime = f(22) * ns_per_tick;
    r.start_time = r.start_boottime;
    r.total_vm = f(23) / crate::sys::page_size();
    r.has_mm = u32::from(f(23) != 0);
    // stat has only the total resident pages, not the split.
    r.rss_anon = f(24);
    r.rlim[2 * 5] = f(25);
    r.start_code = f(26);
    r.end_code = f(27);
    r.start_stack = f(28);
    r.sig_pending = f(31);
    r.sig_blocked = f(32);
    r.sig_ignored = f(33);
    r.sig_caught = f(34);
    r.exit_signal = f(38) as i32;
    r.cpu = f(39) as u32;
    r.rt_priority = f(40) as u32;
    r.policy = f(41) as u32;
    r.gtime = f(43) * ns_per_tick;
    r.cgtime = f(44) * ns_per_tick;
    r.start_data = f(45);
    r.end_data = f(46);
    r.start_brk = f(47);
    r.arg_start = f(48);
    r.arg_end = f(49);
    r.env_start = f(50);
    r.env_end = f(51);
    r.exit_code = f(52) as u32;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    r.locked_vm = kb("VmLck:") / 4;
    r.rss_sum = [
        kb("RssFile:") / 4,
        kb("RssAnon:") / 4,
        kb("VmSwap:") / 4,
        kb("RssShmem:") / 4,
    ];
    r.nvcsw = kb("voluntary_ctxt_switches:");
    r.nivcsw = kb("nonvoluntary_ctxt_switches:");
    let n = comm.len().min(15);
    r.comm[..n].copy_from_slice(&comm[..n]);
    Some(r)
}

/// Splits /proc/PID/stat into comm and the fields after it (comm may contain spaces and
/// parentheses, so it ends at the last ')').
pub fn split_stat(stat: &[u8]) -> Option<(Vec<u8>, Vec<String>)> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = stat.get(open + 1..close)?.to_vec();
    let rest = String::from_utf8_lossy(stat.get(close + 1..)?);
    Some((comm, rest.split_whitespace().map(str::to_owned).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_procfs_process_totals_are_the_kernels_group_times() {
        use crate::table::{Origin, Process};
        // Two threads each scaled on its own: together 10 user and 2 system ticks' worth,
        // where the kernel's group numbers say 8 and 6 (the rest from a thread that exited).
        let mut recs: Vec<TaskRecord> = [(7, 5, 1), (8, 5, 1)]
            .into_iter()
            .map(|(tid, u, s)| {
                // SAFETY: plain integers; all-zero is valid.
                let mut r: TaskRecord = unsafe { std::mem::zeroed() };
                (r.tid, r.tgid, r.utime, r.stime) = (tid, 7, u, s);
                r.sum_exec_runtime = u + s;
                r
            })
            .collect();
        carry_group_times(&mut recs, 8, 6);
        let mut p = Process::from_record(&recs[0], 0, Origin::Procfs);
        p.tasks = crate::table::Tasks::new(&recs);
        let sum = p.totals(&recs[0], true);
        assert_eq!((sum.utime, sum.stime), (8, 6));
    }

    #[test]
    fn split_stat_handles_parens_in_comm() {
        let (comm, fields) = split_stat(b"42 (a) (b)) S 1 42 42 0").unwrap();
        assert_eq!(comm, b"a) (b)");
        assert_eq!(fields, ["S", "1", "42", "42", "0"]);
    }
}

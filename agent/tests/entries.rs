//! The Linux view has every entry the kernel's /proc has, found by walking the kernel's /proc
//! for a sleeping child: the same names, types and modes under the root, `/PID`,
//! `/PID/task/TID` and their subdirectories, and the same bytes for every file whose content
//! cannot change between two reads. Needs root (CI runs as root); ignored otherwise.

mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
};

use common::{Agent, eventually};

/// Files whose content moves on its own between two reads (counters, clocks, the reader's own
/// position): compared by existence, type and mode only.
const VOLATILE: &[&str] = &[
    "stat",
    "statm",
    "status",
    "sched",
    "schedstat",
    "io",
    "smaps",
    "smaps_rollup",
    "numa_maps",
    "pagemap",
    "timers",
    "wchan",
    "stack",
    "syscall",
    "ksm_stat",
    "ksm_merging_pages",
    "uptime",
    "loadavg",
    "meminfo",
    "vmstat",
    "zoneinfo",
    "interrupts",
    "softirqs",
    "buddyinfo",
    "pagetypeinfo",
    "slabinfo",
    "diskstats",
    "schedstat",
    "timer_list",
    "sched_debug",
    "kmsg",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "kcore",
    "vmallocinfo",
    "locks",
    "latency_stats",
    "mem",
    "clear_refs",
    "stat",
    "cpuinfo",
    "allocinfo",
    "pressure",
    "dev",
    "sockstat",
    "sockstat6",
    "snmp",
    "snmp6",
    "netstat",
    "tcp",
    "tcp6",
    "udp",
    "udp6",
    "unix",
    "softnet_stat",
    "ptype",
    "fib_trie",
    "fib_triestat",
    "route",
    "arp",
    "xfrm_stat",
    "protocols",
    "netlink",
    "packet",
    "raw",
    "raw6",
    "icmp",
    "icmp6",
    "udplite",
    "udplite6",
    "if_inet6",
    // What these show depends on the reader's capabilities (kptr_restrict): the agent, which
    // keeps only the capabilities it uses, sees zeroed addresses where root sees them.
    "kallsyms",
    "program_cpu",
];

/// (type letter, mode) of every entry of `dir`.
fn entries(dir: &Path) -> BTreeMap<String, (char, u32)> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let md = std::fs::symlink_metadata(e.path()).ok()?;
            let t = md.file_type();
            let kind = if t.is_dir() {
                'd'
            } else if t.is_symlink() {
                'l'
            } else if t.is_fifo() || t.is_socket() || t.is_char_device() {
                's'
            } else {
                'f'
            };
            Some((name, (kind, md.permissions().mode() & 0o7777)))
        })
        .collect()
}

/// The kernel's `dir` and the view's `mirror` have the same entries; files that cannot change
/// read the same; subdirectories `depth` levels down are compared too.
fn same_tree(
    kernel: &Path,
    view: &Path,
    depth: u32,
    skip: &dyn Fn(&str) -> bool,
    wrong: &mut Vec<String>,
) {
    let k = entries(kernel);
    let v = entries(view);
    for (name, (kind, mode)) in &k {
        if skip(name) {
            continue;
        }
        let at = kernel.join(name);
        match v.get(name) {
            None => wrong.push(format!("{}: missing", at.display())),
            Some((vk, vm)) if vk != kind || vm != mode => wrong.push(format!(
                "{}: kernel {kind} {mode:o}, view {vk} {vm:o}",
                at.display()
            )),
            Some(_) => {}
        }
        if *kind == 'f' && !VOLATILE.contains(&name.as_str()) {
            let (a, b) = (std::fs::read(&at), std::fs::read(view.join(name)));
            match (a, b) {
                (Ok(a), Ok(b)) if a != b => {
                    wrong.push(format!("{}: the view's bytes differ", at.display()))
                }
                (Ok(_), Err(e)) => {
                    wrong.push(format!("{}: the kernel reads, the view: {e}", at.display()))
                }
                _ => {}
            }
        }
        if *kind == 'd' && depth > 0 && v.contains_key(name) {
            same_tree(&at, &view.join(name), depth - 1, skip, wrong);
        }
    }
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn every_kernel_entry_is_in_the_view_and_reads_the_same() {
    let (_agent, view) = Agent::start_with_view(&[]);
    let mut child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "the child asleep in the view", || {
        std::fs::read_to_string(view.join(format!("{pid}/status")))
            .ok()
            .filter(|s| s.starts_with("Name:\tsleep"))
            .map(drop)
    });
    let mut wrong = Vec::new();
    let kernel = Path::new("/proc").join(pid.to_string());
    let mine = view.join(pid.to_string());
    // The process's directory and one level below (fd/, fdinfo/, ns/, net/, attr/, task/…).
    same_tree(&kernel, &mine, 1, &|_| false, &mut wrong);
    let task = format!("task/{pid}");
    same_tree(
        &kernel.join(&task),
        &mine.join(&task),
        1,
        &|_| false,
        &mut wrong,
    );
    // The root: host-wide entries, the other processes aside (they come and go).
    let numeric = |n: &str| n.bytes().all(|b| b.is_ascii_digit());
    same_tree(Path::new("/proc"), &view, 0, &numeric, &mut wrong);
    same_tree(
        Path::new("/proc/sys/kernel"),
        &view.join("sys/kernel"),
        0,
        &|_| false,
        &mut wrong,
    );
    // Files a rendering cannot hold (the size of the address space, or never ending) are
    // refused at open, not read to their end.
    for path in [mine.join("pagemap"), view.join("kmsg")] {
        let err = std::fs::File::open(&path).map(drop).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "{}: {err}",
            path.display()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

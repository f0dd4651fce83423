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

use common::{Agent, eventually, view::mount_view};

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
    // The last pid handed out: any process or thread started anywhere moves it.
    "ns_last_pid",
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

/// What writing `value` to `path` gets, opened as a shell's `>` opens it: `ok`, or the
/// failing step and its errno's name. Debian's python3, which every user may run.
const PYTHON: &str = "/usr/bin/python3";

fn try_write(user: Option<&[&str]>, path: &Path, value: &str) -> String {
    const SCRIPT: &str = "import os, sys, errno
try:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
except OSError as e:
    print('open', errno.errorcode[e.errno]); sys.exit()
try:
    os.write(fd, sys.argv[2].encode()); print('ok')
except OSError as e:
    print('write', errno.errorcode[e.errno])";
    let mut cmd = match user {
        Some(prefix) => {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(PYTHON);
            c
        }
        None => Command::new(PYTHON),
    };
    let out = cmd
        .args(["-c", SCRIPT])
        .arg(path)
        .arg(value)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, changes users"]
fn writes_reach_the_kernel_with_the_writers_rights() {
    let (_agent, view) = Agent::start_with_view(&[]);
    let mut root_child = Command::new("sleep").arg("60").spawn().unwrap();
    let mut nobody_child = common::sleep_as_nobody(60);
    let (mine, theirs) = (root_child.id(), nobody_child.id());
    eventually(5, "both children in the view", || {
        [mine, theirs]
            .iter()
            .all(|p| view.join(format!("{p}/oom_score_adj")).exists())
            .then_some(())
    });
    let nobody: &[&str] = &[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    // Root without CAP_SYS_RESOURCE: procfs lets only that capability lower oom_score_adj
    // below the floor, and the agent holds it; the writer's lack must win.
    let weak_root: &[&str] = &["setpriv", "--bounding-set=-sys_resource"];
    let ratelimit = "sys/kernel/printk_ratelimit";
    let old_ratelimit = std::fs::read_to_string(Path::new("/proc").join(ratelimit)).unwrap();
    let bumped = (old_ratelimit.trim().parse::<u32>().unwrap() + 1).to_string();
    // (who, file under /proc or the view, value, what it is reset to first)
    let cases: Vec<(Option<&[&str]>, String, String, &str)> = vec![
        (None, format!("{theirs}/oom_score_adj"), "500".into(), "0"),
        (
            Some(nobody),
            format!("{theirs}/oom_score_adj"),
            "100".into(),
            "0",
        ),
        (
            Some(nobody),
            format!("{theirs}/oom_score_adj"),
            "-100".into(),
            "0",
        ),
        (
            Some(nobody),
            format!("{mine}/oom_score_adj"),
            "7".into(),
            "0",
        ),
        (
            Some(weak_root),
            format!("{theirs}/oom_score_adj"),
            "-500".into(),
            "300",
        ),
        (
            Some(nobody),
            format!("{theirs}/coredump_filter"),
            "0x33".into(),
            "0x23",
        ),
        // The agent has CAP_SYS_NICE, which procfs asks of anyone but the process itself.
        (
            Some(nobody),
            format!("{theirs}/timerslack_ns"),
            "70000".into(),
            "50000",
        ),
        (
            None,
            format!("{theirs}/timerslack_ns"),
            "80000".into(),
            "50000",
        ),
        (None, ratelimit.into(), bumped, old_ratelimit.trim()),
        (
            Some(nobody),
            ratelimit.into(),
            "9".into(),
            old_ratelimit.trim(),
        ),
    ];
    let mut wrong = Vec::new();
    for (who, rel, value, reset) in &cases {
        let mut seen = Vec::new();
        for base in [Path::new("/proc"), view.as_path()] {
            let kernel_file = Path::new("/proc").join(rel);
            std::fs::write(&kernel_file, reset).unwrap();
            let result = try_write(*who, &base.join(rel), value);
            let now = std::fs::read_to_string(&kernel_file).unwrap();
            seen.push((result, now));
        }
        if seen[0] != seen[1] {
            wrong.push(format!(
                "{who:?} writing {value} to {rel}: /proc {:?}, view {:?}",
                seen[0], seen[1]
            ));
        }
    }
    std::fs::write(Path::new("/proc").join(ratelimit), old_ratelimit.trim()).unwrap();
    // Each outcome above is the kernel's; these are the ones that show the writer's rights
    // were used, not the agent's.
    let expect = |who: Option<&[&str]>, rel: &str, value: &str, want: &str| {
        let got = try_write(who, &view.join(rel), value);
        assert_eq!(got, want, "{who:?} writing {value} to {rel}");
    };
    expect(None, &format!("{theirs}/oom_score_adj"), "250", "ok");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{theirs}/oom_score_adj")).unwrap(),
        "250\n"
    );
    expect(
        Some(nobody),
        &format!("{mine}/oom_score_adj"),
        "7",
        "open EACCES",
    );
    expect(
        Some(nobody),
        &format!("{theirs}/timerslack_ns"),
        "1",
        "write EPERM",
    );
    expect(Some(nobody), ratelimit, "9", "open EACCES");
    // The shell's way, as an operator types it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo 1 > {}/{theirs}/coredump_filter",
            view.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{theirs}/coredump_filter")).unwrap(),
        "00000001\n"
    );
    for c in [&mut root_child, &mut nobody_child] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `cat` of each path, run in the network, UTS and IPC namespaces of `ns_of` (or the test's own).
fn cat_in(ns_of: Option<u32>, paths: &[std::path::PathBuf]) -> String {
    let mut cmd = match ns_of {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "-u", "-i", "cat"]);
            c
        }
        None => Command::new("cat"),
    };
    let out = cmd.args(paths).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, makes namespaces"]
fn host_wide_files_answer_for_the_readers_namespaces_or_the_scopes() {
    let (agent, view) = Agent::start_with_view(&[]);
    // A process with network, UTS and IPC namespaces of its own, set apart from the host's.
    let mut child = Command::new("unshare")
        .args(["--net", "--uts", "--ipc", "sh", "-c"])
        .arg(
            "hostname bpfproc-ns-test && echo 1234 > /proc/sys/net/core/somaxconn \
             && ipcmk -M 4096 >/dev/null && exec sleep 60",
        )
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "the child set up and asleep", || {
        proc_comm(pid).filter(|c| c == "sleep").map(drop)
    });
    let files = [
        "sys/kernel/hostname",
        "sys/net/core/somaxconn",
        "sysvipc/shm",
    ];
    let under = |base: &Path| files.iter().map(|f| base.join(f)).collect::<Vec<_>>();
    let theirs = cat_in(Some(pid), &under(Path::new("/proc")));
    let ours = cat_in(None, &under(Path::new("/proc")));
    assert!(theirs.starts_with("bpfproc-ns-test\n1234\n"), "{theirs}");
    assert_ne!(theirs, ours, "the namespaces differ from the host's");
    // The default view answers each reader for its own namespaces, as /proc does.
    assert_eq!(cat_in(Some(pid), &under(&view)), theirs);
    assert_eq!(cat_in(None, &under(&view)), ours);
    // A view scoped to the process answers for its namespaces, whoever reads; one scoped to
    // a cgroup, for those of the cgroup's oldest process.
    let scoped = mount_view(&agent, "scoped", &format!("pid={pid}"));
    assert_eq!(cat_in(None, &under(&scoped)), theirs);
    let cgroup = common::cgroup2_root().join(format!("bpfproc-ns-test-{pid}"));
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    let by_cgroup = mount_view(&agent, "by-cgroup", &format!("cgroup={}", cgroup.display()));
    assert_eq!(cat_in(None, &under(&by_cgroup)), theirs);
    // A write lands in the writer's namespace, not the host's.
    let host_somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-u", "-i", "sh", "-c"])
        .arg(format!(
            "echo 2345 > {}/sys/net/core/somaxconn",
            view.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        cat_in(
            Some(pid),
            &[Path::new("/proc/sys/net/core/somaxconn").into()]
        ),
        "2345\n"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap(),
        host_somaxconn
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&cgroup);
}

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

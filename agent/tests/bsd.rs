//! The BSD personalities through real mounts: FreeBSD's procfs(5), NetBSD's mount_procfs(8)
//! with its Linux-compatible nodes, and OpenBSD's (the same without them, `nolinux`). Needs
//! root (CI runs as root): `#[ignore]`d otherwise.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use common::{
    Agent, eventually, proc_stat,
    view::{errno_of, mount_view, names_in, write_file},
};

/// A `sleep 30` that is its own session leader (FreeBSD's `sldr`), with a known open-files
/// limit and working directory, once it is asleep in the view.
fn bsd_sleeper(view: &Path) -> Child {
    let child = Command::new("setsid")
        .args([
            "sh",
            "-c",
            "ulimit -S -n 256 && ulimit -H -n 512 && cd /tmp && exec sleep 30",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "asleep", || {
        proc_stat(pid)
            .filter(|(c, f)| c == "sleep" && f[0] == "S")
            .map(drop)
    });
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    child
}

fn non_pids(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.parse::<u32>().is_err())
        .collect()
}

/// The status line FreeBSD and NetBSD share, for a sleeper of ours, with the start, user and
/// system times and the wait message masked (`T` and `W`; the wait message is the kernel's
/// wchan, which many kernels show as 0, so `nochan`): the kernel's own ids and groups are in
/// it.
fn bsd_status_masked(text: &str) -> String {
    let mut f: Vec<String> = text.trim_end().split(' ').map(str::to_owned).collect();
    for i in [7, 8, 9] {
        let (s, us) = f[i].split_once(',').expect("sec,usec");
        assert!(s.parse::<u64>().is_ok() && us.parse::<u32>().is_ok_and(|u| u < 1_000_000));
        f[i] = "T".into();
    }
    assert!(!f[10].is_empty(), "{text}");
    f[10] = "W".into();
    f.join(" ")
}

/// `euid,egid,groups…` of a process as the kernel reports them.
fn kernel_credentials(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str, n: usize| -> String {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..]
            .split_whitespace()
            .nth(n)
            .unwrap_or("")
            .to_owned()
    };
    let mut creds = format!("{},{}", field("Uid:", 1), field("Gid:", 1));
    let groups = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap();
    for g in groups.split_whitespace() {
        creds.push(',');
        creds.push_str(g);
    }
    creds
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn freebsd_personality_serves_procfs5_files() {
    let agent = Agent::start();
    let view = mount_view(&agent, "freebsd", "personality=freebsd");
    let mut child = bsd_sleeper(&view);
    let pid = child.id();
    let me = std::process::id();
    let file = |name: &str| view.join(format!("{pid}/{name}"));

    // The root: pid directories and curproc, a link to the caller's.
    assert_eq!(non_pids(&view), ["curproc"]);
    assert_eq!(
        std::fs::read_link(view.join("curproc")).unwrap(),
        PathBuf::from(me.to_string())
    );
    assert!(
        view.join("curproc/status").exists(),
        "curproc leads somewhere"
    );
    assert_eq!(
        names_in(&view.join(pid.to_string())),
        [
            "cmdline", "ctl", "dbregs", "etype", "file", "fpregs", "map", "mem", "note", "notepg",
            "regs", "rlimit", "status"
        ]
    );

    // status: every field of the manual, for a session leader without a terminal.
    let status = std::fs::read_to_string(file("status")).unwrap();
    assert_eq!(
        bsd_status_masked(&status),
        format!(
            "sleep {pid} {me} {pid} {pid} -1,-1 sldr T T T W {} -",
            kernel_credentials(pid)
        ),
        "{status}"
    );
    assert!(
        status.ends_with(" -\n"),
        "one line, and no jail: {status:?}"
    );

    // rlimit: FreeBSD's names and order, the kernel's values, -1 for unlimited.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let kernel = |name: &str| -> String {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        let v: Vec<&str> = line[25..].split_whitespace().take(2).collect();
        let n = |s: &str| {
            if s == "unlimited" {
                "-1".to_string()
            } else {
                s.to_string()
            }
        };
        format!("{} {}", n(v[0]), n(v[1]))
    };
    let mut want = String::new();
    for (bsd, linux) in [
        ("cpu", "Max cpu time"),
        ("fsize", "Max file size"),
        ("data", "Max data size"),
        ("stack", "Max stack size"),
        ("core", "Max core file size"),
        ("rss", "Max resident set"),
        ("memlock", "Max locked memory"),
        ("nproc", "Max processes"),
        ("nofile", "Max open files"),
        ("sbsize", ""),
        ("vmem", "Max address space"),
    ] {
        let v = if linux.is_empty() {
            "-1 -1".into()
        } else {
            kernel(linux)
        };
        want.push_str(&format!("{bsd} {v}\n"));
    }
    let rlimit = std::fs::read_to_string(file("rlimit")).unwrap();
    assert_eq!(rlimit, want);
    assert!(rlimit.contains("\nnofile 256 512\n"), "{rlimit}");

    assert_eq!(std::fs::read(file("etype")).unwrap(), b"Linux ELF64\n");
    assert_eq!(std::fs::read(file("cmdline")).unwrap(), b"sleep\x0030\x00");
    assert_eq!(
        std::fs::read_link(file("file")).unwrap(),
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
    );

    // map: one procfs_map.c line per kernel mapping; no VM objects on Linux.
    let map = std::fs::read_to_string(file("map")).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert_eq!(map.lines().count(), maps.lines().count(), "{map}");
    for (ours, theirs) in map.lines().zip(maps.lines()) {
        let f: Vec<&str> = ours.split(' ').collect();
        let (range, perms) = theirs.split_once(' ').unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        assert_eq!((hex(f[0]), hex(f[1])), (hex(start), hex(end)), "{ours}");
        assert_eq!(f[5], &perms[..3], "{ours}");
        assert_eq!(&f[6..9], ["-1", "-1", "0x0"], "{ours}");
        assert!(
            matches!(f[9], "COW" | "NCOW") && matches!(f[10], "NC" | "NNC"),
            "{ours}"
        );
    }

    // mem: the executable's ELF header at its first mapping, read without stopping it.
    use std::os::unix::fs::FileExt as _;
    let first = u64::from_str_radix(maps.split('-').next().unwrap(), 16).unwrap();
    let mut magic = [0u8; 4];
    std::fs::File::open(file("mem"))
        .unwrap()
        .read_exact_at(&mut magic, first)
        .unwrap();
    assert_eq!(&magic, b"\x7fELF");

    // The register files need the process stopped for debugging, as in FreeBSD.
    assert_eq!(errno_of(std::fs::read(file("dbregs"))), Some(libc::EBUSY));
    write_file(&file("ctl"), b"attach").unwrap();
    assert_eq!(std::fs::read(file("regs")).unwrap().len(), 27 * 8);
    assert_eq!(std::fs::read(file("fpregs")).unwrap().len(), 512);
    let dbregs = std::fs::read(file("dbregs")).unwrap();
    assert_eq!(dbregs.len(), 8 * 8, "dr0…dr7");
    assert!(dbregs[..32].iter().all(|&b| b == 0), "no breakpoints set");
    write_file(&file("dbregs"), &dbregs).unwrap();
    write_file(&file("ctl"), b"detach").unwrap();

    // A signal by name through ctl.
    write_file(&file("ctl"), b"term").unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert!(
        agent
            .cli(&["umount", view.to_str().unwrap()])
            .status
            .success()
    );
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn freebsd_nodes_belong_to_the_real_user_and_mem_to_kmem() {
    let agent = Agent::start();
    let view = mount_view(&agent, "freebsd", "personality=freebsd");
    let mut child = common::sleep_as_nobody(30);
    let pid = child.id();
    eventually(5, "owned by nobody", || {
        use std::os::unix::fs::MetadataExt as _;
        let md = std::fs::metadata(view.join(pid.to_string())).ok()?;
        (md.uid() == 65534).then_some(())
    });
    let kmem = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("kmem:")?
                .split(':')
                .nth(1)?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(65534);
    use std::os::unix::fs::MetadataExt as _;
    for name in names_in(&view.join(pid.to_string())) {
        let md = std::fs::symlink_metadata(view.join(format!("{pid}/{name}"))).unwrap();
        let gid = if name == "mem" { kmem } else { 65534 };
        assert_eq!((md.uid(), md.gid()), (65534, gid), "{name}");
    }
    let mode = |name: &str| {
        std::fs::metadata(view.join(format!("{pid}/{name}")))
            .unwrap()
            .mode()
            & 0o777
    };
    assert_eq!(
        [
            mode("ctl"),
            mode("mem"),
            mode("dbregs"),
            mode("status"),
            mode("map")
        ],
        [0o200, 0o600, 0o600, 0o444, 0o400]
    );
    // Another user may read the status line but not the link to the executable.
    let other = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65533", "--regid=65533", "--clear-groups"])
            .args(args)
            .output()
            .unwrap()
    };
    let status = view.join(format!("{pid}/status"));
    assert!(other(&["cat", status.to_str().unwrap()]).status.success());
    let file = view.join(format!("{pid}/file"));
    let out = other(&["readlink", file.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn netbsd_personality_serves_mount_procfs_files() {
    let agent = Agent::start();
    let view = mount_view(&agent, "netbsd", "personality=netbsd");
    let mut child = bsd_sleeper(&view);
    let pid = child.id();
    let me = std::process::id();
    let file = |name: &str| view.join(format!("{pid}/{name}"));

    assert_eq!(
        non_pids(&view),
        [
            "cpuinfo", "curproc", "devices", "meminfo", "mounts", "self", "stat", "uptime"
        ]
    );
    for link in ["curproc", "self"] {
        assert_eq!(
            std::fs::read_link(view.join(link)).unwrap(),
            PathBuf::from(me.to_string())
        );
    }
    assert_eq!(
        names_in(&view.join(pid.to_string())),
        [
            "cmdline", "cwd", "exe", "fd", "file", "fpregs", "map", "maps", "mem", "note",
            "notepg", "regs", "root", "stat", "statm", "status"
        ]
    );

    assert_eq!(std::fs::read(file("cmdline")).unwrap(), b"sleep\x0030\x00");
    assert_eq!(
        std::fs::read_link(file("cwd")).unwrap(),
        PathBuf::from("/tmp")
    );
    assert_eq!(
        std::fs::read_link(file("root")).unwrap(),
        PathBuf::from("/")
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(std::fs::read_link(file("exe")).unwrap(), exe);
    assert_eq!(std::fs::read_link(file("file")).unwrap(), exe);
    assert_eq!(
        names_in(&file("fd")),
        names_in(Path::new(&format!("/proc/{pid}/fd")))
    );
    assert_eq!(
        std::fs::read_link(file("fd/0")).unwrap(),
        PathBuf::from("/dev/null")
    );

    // maps is the Linux file; map has NetBSD's nine fields for each of its regions.
    let maps = std::fs::read_to_string(file("maps")).unwrap();
    assert_eq!(
        maps,
        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
    );
    let map = std::fs::read_to_string(file("map")).unwrap();
    assert_eq!(map.lines().count(), maps.lines().count());
    for (ours, theirs) in map.lines().zip(maps.lines()) {
        let f: Vec<&str> = ours.split(' ').collect();
        assert_eq!(f.len(), 9, "{ours}");
        let (range, perms) = theirs.split_once(' ').unwrap();
        assert_eq!(format!("{}-{}", &f[0][2..], &f[1][2..]), range, "{ours}");
        assert_eq!(f[2], &perms[..3], "{ours}");
        assert!(
            matches!(f[4], "COW" | "NCOW") && matches!(f[5], "NC" | "NNC"),
            "{ours}"
        );
        assert!(["0", "1", "2", "4"].contains(&f[6]), "inheritance: {ours}");
    }

    // status: FreeBSD's line without the jail.
    let status = std::fs::read_to_string(file("status")).unwrap();
    assert_eq!(
        bsd_status_masked(&status),
        format!(
            "sleep {pid} {me} {pid} {pid} -1,-1 sldr T T T W {}",
            kernel_credentials(pid)
        ),
        "{status}"
    );

    // The Linux-compatible nodes.
    let stat = std::fs::read_to_string(file("stat")).unwrap();
    assert!(
        stat.starts_with(&format!("{pid} (sleep) S {me} ")),
        "{stat}"
    );
    assert_eq!(
        std::fs::read_to_string(file("statm"))
            .unwrap()
            .split(' ')
            .count(),
        7
    );
    let meminfo = std::fs::read_to_string(view.join("meminfo")).unwrap();
    assert!(meminfo.starts_with("MemTotal:"), "{meminfo}");
    assert!(
        std::fs::read_to_string(view.join("cpuinfo"))
            .unwrap()
            .contains("processor")
    );
    assert!(
        std::fs::read_to_string(view.join("devices"))
            .unwrap()
            .starts_with("Character devices:")
    );
    assert!(
        std::fs::read_to_string(view.join("stat"))
            .unwrap()
            .starts_with("cpu ")
    );
    assert_eq!(
        std::fs::read_to_string(view.join("uptime"))
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    let mounts = std::fs::read_to_string(view.join("mounts")).unwrap();
    assert!(
        mounts.lines().any(|l| l.split(' ').nth(1) == view.to_str()),
        "the caller's mount table, this view in it: {mounts}"
    );
    assert!(
        std::fs::symlink_metadata(view.join("mounts"))
            .unwrap()
            .file_type()
            .is_file(),
        "a file, as NetBSD's"
    );

    // Another user may not see where the process is.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "readlink",
        ])
        .arg(file("cwd"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");

    child.kill().unwrap();
    child.wait().unwrap();
    eventually(5, "ENOENT after exit", || {
        (errno_of(std::fs::read(file("status"))) == Some(libc::ENOENT)).then_some(())
    });
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn nolinux_hides_the_netbsd_linux_nodes() {
    let agent = Agent::start();
    // OpenBSD's procfs is the same subset.
    let view = mount_view(&agent, "openbsd", "personality=openbsd,nolinux");
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    assert_eq!(non_pids(&view), ["curproc", "self"]);
    let files = names_in(&view.join(pid.to_string()));
    assert!(
        !files.iter().any(|f| f == "stat" || f == "statm"),
        "{files:?}"
    );
    for hidden in [
        "meminfo",
        "uptime",
        "mounts",
        &format!("{pid}/stat"),
        &format!("{pid}/statm"),
    ] {
        assert_eq!(
            errno_of(std::fs::read(view.join(hidden))),
            Some(libc::ENOENT),
            "{hidden}"
        );
    }
    assert!(std::fs::read(view.join(format!("{pid}/status"))).is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
}

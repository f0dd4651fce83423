//! The FUSE view, through real mounts: the tools people use (procps, psmisc, psutil) must give
//! the kernel's answers when the view is bind-mounted over /proc in a private mount namespace.
//! The other personalities are tested in bsd.rs, plan9.rs and svr4_qnx.rs, control files
//! through the view in control.rs. Needs root (CI runs as root): `#[ignore]`d otherwise.

mod common;

use std::{
    collections::HashSet,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    Agent, ExecOnCue, cgroup2_root, eventually, proc_stat,
    view::{
        errno_of, fuse_requests, has_fuse_uring, mount_view, mounted_agent, names_in,
        uring_requests, write_file,
    },
};

fn sh(cmd: &str) -> String {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", cmd])
        .output()
        .expect("unshare");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn on_kernel(cmd: &str) -> String {
    sh(cmd)
}

fn on_view(view: &Path, cmd: &str) -> String {
    sh(&format!("mount --bind {} /proc && {cmd}", view.display()))
}

/// Runs `cmd` on the kernel's /proc, on the view, and on the kernel's /proc again. Every line
/// that both kernel runs printed identically (nothing about it changed meanwhile) must be in the
/// view's output; returns how many lines were compared. Skipped: lines of every agent running,
/// the one serving the view and those of tests running beside this one (answering starts and
/// stops worker threads, and a young process that keeps using CPU has a `C` / `%CPU` ratio that
/// is not monotonic: CPU time grows by ticks, the age by whole seconds, so two kernel runs can
/// agree while a run between them rounds the other way), and workqueue workers, whose name in
/// /proc carries the work item they run at that instant (`kworker/0:1-events`).
fn agree(view: &Path, agent: &Agent, cmd: &str) -> usize {
    let mut last = String::new();
    for _attempt in 0..3 {
        let mut agents = agent_pids(agent);
        let before = on_kernel(cmd);
        let ours = on_view(view, cmd);
        let after = on_kernel(cmd);
        agents.extend(agent_pids(agent));
        let own_line = |l: &&str| {
            !l.split_whitespace().take(4).any(|f| agents.contains(f)) && !l.contains("kworker/")
        };
        let after: HashSet<&str> = after.lines().collect();
        let ours_set: HashSet<&str> = ours.lines().collect();
        let stable: Vec<&str> = before
            .lines()
            .filter(|l| after.contains(l))
            .filter(own_line)
            .collect();
        let missing: Vec<&str> = stable
            .iter()
            .copied()
            .filter(|l| !ours_set.contains(l) && !ours.lines().any(|o| same_but_run_state(l, o)))
            .collect();
        if missing.is_empty() {
            assert!(
                !stable.is_empty(),
                "{cmd}: no stable output to compare:\n{before}"
            );
            return stable.len();
        }
        last = format!(
            "{cmd}: lines the kernel printed twice but the view did not:\n{}\n--- view printed:\n{ours}",
            missing.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{last}");
}

/// The pids of every bpfproc agent running now, `agent` among them.
fn agent_pids(agent: &Agent) -> HashSet<String> {
    let mut pids: HashSet<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.parse::<u32>().is_ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "bpfproc")
        })
        .collect();
    pids.insert(agent.pid().to_string());
    pids
}

/// Whether two lines differ only in one process-state code, running against sleeping
/// (`Sl` / `Rl`): a busy process printed sleeping twice by the kernel may have been running at
/// the instant the view's snapshot was taken, and no pair of runs can rule that out.
fn same_but_run_state(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (
        a.split_whitespace().collect(),
        b.split_whitespace().collect(),
    );
    let differ: Vec<(&str, &str)> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| (*x, *y))
        .collect();
    // ps's codes (`Sl`, `Rl`), and psutil's words for the same states.
    let code = |t: &str| t.starts_with(['R', 'S', 'D']);
    let word = |t: &str| matches!(t, "running" | "sleeping" | "idle" | "disk-sleep");
    a.len() == b.len()
        && differ.len() == 1
        && ((code(differ[0].0) && code(differ[0].1) && differ[0].0[1..] == differ[0].1[1..])
            || (word(differ[0].0) && word(differ[0].1)))
}

/// A small process tree of our own that stays put while the tools look at it.
struct Tree(Child);

impl Tree {
    fn new() -> Tree {
        let child = Command::new("sh")
            // "300s", not "300": a bare number in a line can equal the agent's pid (pids restart
            // at 300 after a wrap), and agree() skips the agent's lines.
            .args(["-c", "sleep 300s & sleep 301s & exec sleep 302s"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the shell has exec'd its last sleep and both children exist.
        let pid = child.id();
        eventually(5, "the tree", || {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            (proc_stat(pid)?.0 == "sleep" && kids.split_whitespace().count() == 2).then_some(())
        });
        Tree(child)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let pid = self.0.id();
        let _ = Command::new("pkill")
            .args(["-P", &pid.to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE over /proc in a mount namespace"]
fn procps_psmisc_and_psutil_agree_with_the_kernel() {
    let (agent, view) = mounted_agent();
    let tree = Tree::new();
    let root = tree.0.id();
    for cmd in [
        "ps -e -o pid,ppid,comm,stat,rss".to_string(),
        "ps aux".into(),
        "ps -eLf".into(),
        "ps -e -o pid,user,group,tty,nice,pri,vsz,lstart,cmd".into(),
        "top -b -n 1 | awk 'NR > 7 { print $1, $2, $3, $4, $5, $12 }'".into(),
        "pgrep -l -u root .".into(),
        "pgrep -f 'sleep 30[01]'".into(),
        "pidof sleep | tr ' ' '\\n' | sort".into(),
        format!("pstree -p {root}"),
        format!("pstree -a -p {root}"),
        "free | awk '{ print $1, $2 }'".into(),
        "uptime -s".into(),
        "w -s | tail -n +2".into(),
        format!("kill -0 {root}; echo $?; kill -0 4000000 2>&1; echo $?"),
    ] {
        let n = agree(&view, &agent, &cmd);
        eprintln!("{cmd}: {n} lines agree");
    }
    let psutil = r#"python3 -c '
import psutil
print("boot", psutil.boot_time())
print("mem", psutil.virtual_memory().total)
for p in psutil.process_iter(["pid", "name", "ppid", "status", "memory_info", "cpu_times", "cmdline", "uids"]):
    i = p.info
    print(i["pid"], i["name"], i["ppid"], i["status"], i["memory_info"].rss, i["memory_info"].vms,
          round(i["cpu_times"].user, 1), round(i["cpu_times"].system, 1), i["cmdline"], tuple(i["uids"]))
'"#;
    let n = agree(&view, &agent, psutil);
    assert!(n > 20, "psutil compared only {n} lines");
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn bad_operations_get_procfs_errnos() {
    let (_agent, view) = mounted_agent();
    refuses_bad_operations(&view);
    open_files_outlive_their_process(&view);
}

/// Nothing can be made, removed or renamed, a file the kernel takes no writes to refuses them,
/// and names that are not there are ENOENT: each with the errno the kernel's /proc gives for
/// the same operation, asked side by side.
fn refuses_bad_operations(view: &Path) {
    let me = std::process::id();
    type Op = Box<dyn Fn(&Path) -> Option<i32>>;
    let write = |rel: String| -> Op {
        Box::new(move |d: &Path| errno_of(write_file(&d.join(&rel), b"x\n")))
    };
    let ops: Vec<(&str, Option<i32>, Op)> = vec![
        // procfs's lookups fail before any create.
        (
            "mkdir",
            Some(libc::ENOENT),
            Box::new(|d: &Path| errno_of(std::fs::create_dir(d.join("new")))),
        ),
        (
            "creat",
            Some(libc::ENOENT),
            Box::new(|d: &Path| errno_of(std::fs::File::create(d.join("new")))),
        ),
        (
            "creat in /PID",
            Some(libc::ENOENT),
            Box::new(move |d: &Path| errno_of(std::fs::File::create(d.join(format!("{me}/new"))))),
        ),
        (
            "unlink",
            Some(libc::EPERM),
            Box::new(|d: &Path| errno_of(std::fs::remove_file(d.join("uptime")))),
        ),
        (
            "rmdir",
            Some(libc::EPERM),
            Box::new(move |d: &Path| errno_of(std::fs::remove_dir(d.join(me.to_string())))),
        ),
        (
            "rename",
            Some(libc::ENOENT),
            Box::new(|d: &Path| errno_of(std::fs::rename(d.join("uptime"), d.join("x")))),
        ),
        (
            "rename over",
            Some(libc::EPERM),
            Box::new(|d: &Path| errno_of(std::fs::rename(d.join("uptime"), d.join("loadavg")))),
        ),
        // root opens a read-only file for writing; the kernel refuses the write itself.
        (
            "write stat",
            Some(libc::EINVAL),
            write(format!("{me}/stat")),
        ),
        ("write uptime", Some(libc::EIO), write("uptime".into())),
        (
            "read no pid",
            Some(libc::ENOENT),
            Box::new(|d: &Path| errno_of(std::fs::read(d.join("4000000/stat")))),
        ),
        (
            "pids are canonical",
            Some(libc::ENOENT),
            Box::new(|d: &Path| errno_of(std::fs::read(d.join("0001/stat")))),
        ),
        (
            "no such file",
            Some(libc::ENOENT),
            Box::new(move |d: &Path| errno_of(std::fs::read(d.join(format!("{me}/nosuch"))))),
        ),
    ];
    for (what, want, op) in &ops {
        let kernel = op(Path::new("/proc"));
        assert_eq!(kernel, *want, "{what} on /proc");
        assert_eq!(
            op(view),
            kernel,
            "{what}: the view's errno differs from /proc's"
        );
    }
}

/// A process that exits is ENOENT afterwards, and a file opened before it exited still reads
/// the snapshot taken at open.
fn open_files_outlive_their_process(view: &Path) {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    eventually(5, "child in view", || {
        std::fs::read(view.join(format!("{pid}/stat"))).ok()
    });
    let mut open = std::fs::File::open(view.join(format!("{pid}/status"))).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open, &mut text).unwrap();
    assert!(text.contains(&format!("Pid:\t{pid}\n")), "{text}");
    eventually(5, "ENOENT after exit", || {
        (errno_of(std::fs::read(view.join(format!("{pid}/stat")))) == Some(libc::ENOENT))
            .then_some(())
    });
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_name_no_process_directory_holds_is_looked_up_once_but_pids_every_time() {
    let (agent, view) = mounted_agent();
    let tree = Tree::new();
    let pid = tree.0.id();
    let lookups = || fuse_requests(&agent, "lookup");
    // Resolve the directories first, so only the last component is looked up below.
    std::fs::metadata(view.join(format!("{pid}/task/{pid}/stat"))).unwrap();
    let before = lookups();
    for _ in 0..3 {
        // procps opens `ctty` in every process directory; Linux never had one.
        assert_eq!(
            errno_of(std::fs::metadata(view.join(format!("{pid}/ctty")))),
            Some(libc::ENOENT)
        );
        assert_eq!(
            errno_of(std::fs::metadata(
                view.join(format!("{pid}/task/{pid}/ctty"))
            )),
            Some(libc::ENOENT)
        );
    }
    assert_eq!(
        lookups(),
        before + 2,
        "each miss is remembered by the kernel"
    );
    // A pid that does not exist yet may exist at the next lookup: never remembered.
    let before = lookups();
    for _ in 0..3 {
        assert_eq!(
            errno_of(std::fs::metadata(view.join("4000000"))),
            Some(libc::ENOENT)
        );
    }
    assert_eq!(lookups(), before + 3);
    // The names a process directory does hold still resolve.
    assert!(
        std::fs::read_to_string(view.join(format!("{pid}/stat")))
            .unwrap()
            .starts_with(&format!("{pid} (sleep)"))
    );
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_stale_table_brings_only_the_opened_process_up_to_date() {
    let (agent, view) = Agent::start_with_view(&["--max-staleness-ms", "50"]);
    let mut busy = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = busy.id();
    // utime, in clock ticks: the 14th field of stat.
    let utime = |root: &Path| -> u64 {
        let stat = std::fs::read_to_string(root.join(format!("{pid}/stat"))).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(11).unwrap().parse().unwrap()
    };
    let first = utime(&view);
    // Long past the bound, and nobody asked meanwhile: every number in the table is stale.
    std::thread::sleep(Duration::from_millis(400));
    let stats = agent.json("/v1/stats");
    let second = utime(&view);
    let kernel = utime(Path::new("/proc"));
    let after = agent.json("/v1/stats");
    busy.kill().unwrap();
    busy.wait().unwrap();
    assert!(
        first < second && second <= kernel,
        "the view's utime moved with the kernel's: {first} then {second}, kernel {kernel}"
    );
    assert_eq!(
        after["process_reads"].as_u64().unwrap(),
        stats["process_reads"].as_u64().unwrap() + 1,
        "one read of the one process"
    );
    assert_eq!(
        after["table"]["snapshots"], stats["table"]["snapshots"],
        "and no pass over the host"
    );
    // Over HTTP too.
    let before = after["process_reads"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let me = std::process::id();
    assert_eq!(agent.json(&format!("/v1/processes/{me}"))["pid"], me);
    assert_eq!(
        agent.json("/v1/stats")["process_reads"].as_u64().unwrap(),
        before + 1
    );
    let (_, metrics) = agent.get("/metrics");
    assert!(
        String::from_utf8_lossy(&metrics)
            .lines()
            .any(|l| l == format!("bpfproc_process_reads_total {}", before + 1)),
        "and in /metrics"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn self_resolves_to_the_calling_process_and_files_have_owners() {
    let (_agent, view) = mounted_agent();
    let me = std::process::id();
    assert_eq!(
        std::fs::read_link(view.join("self")).unwrap(),
        PathBuf::from(me.to_string())
    );
    // From another thread of this process: self is still the process, thread-self the thread.
    let view2 = view.clone();
    let (tself, tid) = std::thread::spawn(move || {
        let tid = nix::unistd::gettid().as_raw() as u32;
        (std::fs::read_link(view2.join("thread-self")).unwrap(), tid)
    })
    .join()
    .unwrap();
    assert_eq!(tself, PathBuf::from(format!("{me}/task/{tid}")));

    // A process of another user: its directory and files are that user's; environ is not
    // readable by others.
    let mut child = common::sleep_as_nobody(30);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(150));
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(view.join(pid.to_string())).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    let out = Command::new("setpriv")
        .args(["--reuid=65533", "--regid=65533", "--clear-groups", "cat"])
        .arg(view.join(format!("{pid}/environ")))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65533", "--regid=65533", "--clear-groups", "cat"])
        .arg(view.join(format!("{pid}/stat")))
        .output()
        .unwrap();
    assert!(out.status.success(), "stat is world-readable: {out:?}");
    // The agent decides access itself (no default_permissions), so each procfs rule is asked
    // here as another user would meet it: access(2), a link only the owner may follow, a
    // directory only the owner may list; and the owner itself passes all three.
    let as_user = |uid: u32, script: &str| {
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let probe = format!(
        "cd {view}/{pid}; test -r environ && echo environ; test -r stat && echo stat; \
         readlink exe >/dev/null && echo exe; ls fd >/dev/null 2>&1 && echo fd; \
         test -w ctl && echo ctl",
        view = view.display()
    );
    assert_eq!(as_user(65533, &probe), "stat\n", "another user");
    assert_eq!(
        as_user(65534, &probe),
        "environ\nstat\nexe\nfd\nctl\n",
        "the owner"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, makes a cgroup"]
fn mounts_on_demand_with_their_own_options_and_unmount_cleanly() {
    let agent = Agent::start();
    let a = agent.dir.join("a");
    let b = agent.dir.join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();

    // A container's view: a cgroup with one process in it.
    let cg_root = cgroup2_root();
    let cg = cg_root.join(format!("bpfproc-test-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let mut inside = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(cg.join("cgroup.procs"), inside.id().to_string()).unwrap();

    let out = agent.cli(&["mount", a.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let rel = cg.strip_prefix(&cg_root).unwrap();
    let out = agent.cli(&[
        "mount",
        "-o",
        &format!("cgroup={},umask=022", rel.display()),
        b.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8(agent.cli(&["mounts"]).stdout).unwrap();
    assert!(
        list.contains(a.to_str().unwrap()) && list.contains(b.to_str().unwrap()),
        "{list}"
    );

    let pids = |dir: &Path| -> HashSet<u32> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    eventually(5, "cgroup view", || {
        (pids(&b) == HashSet::from([inside.id()])).then_some(())
    });
    assert!(pids(&a).len() > 20 && pids(&a).contains(&inside.id()) && pids(&a).contains(&1));
    // Outside the cgroup: not there, and not reachable by name either.
    assert_eq!(
        errno_of(std::fs::read(b.join("1/stat"))),
        Some(libc::ENOENT)
    );
    // But a caller outside reaches its own process through `self` (not listed), so the
    // tools that check /proc/self/stat or read /proc/mounts work on the view as typed.
    let me = std::process::id().to_string();
    let own = std::fs::read_to_string(b.join("self/stat")).unwrap();
    assert!(own.starts_with(&format!("{me} (")), "{own}");
    assert!(
        std::fs::read_to_string(b.join("mounts"))
            .unwrap()
            .contains(" / ")
    );
    assert!(
        !pids(&b).contains(&std::process::id()),
        "the caller is not listed"
    );
    let ps = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /proc && ps -e -o pid=",
            b.display()
        ))
        .output()
        .unwrap();
    assert!(ps.status.success(), "{ps:?}");
    let listed: HashSet<u32> = String::from_utf8_lossy(&ps.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(
        listed,
        HashSet::from([inside.id()]),
        "ps on the container's view"
    );

    // Bad options are refused with a reason, and nothing is mounted.
    let c = agent.dir.join("c");
    std::fs::create_dir_all(&c).unwrap();
    let out = agent.cli(&["mount", "-o", "personality=amiga", c.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("amiga"),
        "{out:?}"
    );
    let out = agent.cli(&["mount", a.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a second mount on the same directory is refused"
    );

    // Unmount through the CLI, and with the system's umount.
    assert!(agent.cli(&["umount", a.to_str().unwrap()]).status.success());
    assert!(Command::new("umount").arg(&b).status().unwrap().success());
    eventually(5, "mounts gone", || {
        let list = String::from_utf8(agent.cli(&["mounts"]).stdout).unwrap();
        list.trim().is_empty().then_some(())
    });
    assert!(pids(&a).is_empty() && pids(&b).is_empty());
    inside.kill().unwrap();
    inside.wait().unwrap();
    let _ = std::fs::remove_dir(&cg);
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_killed_unkept_agents_mount_is_recovered_and_sigterm_unmounts() {
    // Views not kept across restarts (tests/restart.rs has the kept ones) die with the agent.
    let (agent, view) = Agent::start_with_view(&["--keep-views-secs", "0"]);
    let dir = agent.dir.clone();
    assert!(std::fs::read(view.join("uptime")).is_ok());
    agent.crash();
    // The dead mount answers ENOTCONN until someone cleans up.
    let err = std::fs::metadata(&view).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let agent = Agent::start_in(
        dir,
        format!("127.0.0.1:{}", common::free_port()),
        &["--mount", view.to_str().unwrap(), "--keep-views-secs", "0"],
    );
    assert!(
        std::fs::read(view.join("uptime")).is_ok(),
        "the next agent took the mount point over"
    );
    // A file still open in the view makes a plain unmount fail with EBUSY; SIGTERM must not
    // leave the mount behind for that.
    let held = std::fs::File::open(view.join("uptime")).unwrap();
    let status = agent.stop();
    assert!(status.success(), "{status}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(view.to_str().unwrap()),
        "SIGTERM left a mount behind"
    );
    assert!(
        matches!(std::fs::read(view.join("uptime")), Err(e) if e.kind() == ErrorKind::NotFound)
    );
    drop(held);
}

/// FUSE requests of operation `op` the agent has answered so far.
#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn passthrough_reads_come_from_a_fresh_backing_file_and_concurrent_opens_still_work() {
    let agent = Agent::start();
    let view = mount_view(&agent, "pt", "passthrough");
    let mut child = ExecOnCue::start();
    let status = child.file_in(&view, "status");
    let first_line = |text: &[u8]| {
        String::from_utf8_lossy(text)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    // One open at a time: every open renders afresh, and the kernel reads the rendering from
    // its backing file, so the agent sees OPENs and no READ (with a kernel that has FUSE
    // passthrough, which this suite's kernel, 6.18, does).
    let (opens, reads) = (fuse_requests(&agent, "open"), fuse_requests(&agent, "read"));
    for _ in 0..5 {
        assert_eq!(first_line(&std::fs::read(&status).unwrap()), "Name:\tsh");
    }
    assert!(fuse_requests(&agent, "open") >= opens + 5);
    assert_eq!(
        fuse_requests(&agent, "read"),
        reads,
        "reads served by the kernel"
    );
    // Reads at offsets and in small pieces see the same bytes as one read.
    let whole = std::fs::read(&status).unwrap();
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::File::open(&status).unwrap();
        let mut piece = [0u8; 7];
        let n = f.read_at(&mut piece, 5).unwrap();
        assert_eq!(&piece[..n], &whole[5..5 + n]);
    }
    // Two handles open on the same file at once: the kernel allows one backing file per
    // inode, so both share it; both read the whole file, and still no READ reaches the agent.
    let reads = fuse_requests(&agent, "read");
    {
        use std::io::Read as _;
        let mut a = std::fs::File::open(&status).unwrap();
        let mut b = std::fs::File::open(&status).unwrap();
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        b.read_to_end(&mut tb).unwrap();
        a.read_to_end(&mut ta).unwrap();
        assert_eq!(first_line(&ta), "Name:\tsh");
        assert_eq!(first_line(&tb), "Name:\tsh");
        assert_eq!(ta.len(), tb.len());
    }
    assert_eq!(fuse_requests(&agent, "read"), reads);
    // Never stale: once the process has exec'd, the next open shows it.
    child.exec();
    assert_eq!(first_line(&std::fs::read(&status).unwrap()), "Name:\tsleep");
}

/// The first line of the file at `path`.
fn first_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_cache_mount_serves_repeated_reads_from_the_page_cache_within_its_bound() {
    let agent = Agent::start();
    let view = agent.dir.join("cached");
    std::fs::create_dir_all(&view).unwrap();
    // A 4 s bound: long enough that the back-to-back reads below fall inside it on any machine.
    let out = agent.cli(&["mount", "-o", "cache=4000", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let mut child = ExecOnCue::start();
    let pid = child.pid();
    let status = child.file_in(&view, "status");
    let name = || first_line(&status);
    assert_eq!(name(), "Name:\tsh");
    // Read again at once: the kernel serves it (no OPEN, no READ reaches the agent).
    let (opens, reads) = (fuse_requests(&agent, "open"), fuse_requests(&agent, "read"));
    for _ in 0..5 {
        assert_eq!(name(), "Name:\tsh");
    }
    assert_eq!(
        fuse_requests(&agent, "read"),
        reads,
        "served from the page cache"
    );
    assert_eq!(fuse_requests(&agent, "open"), opens);
    // Size is the content's, so tools that trust st_size read it whole.
    let len = std::fs::metadata(&status).unwrap().len();
    assert_eq!(len as usize, std::fs::read(&status).unwrap().len());
    // Control files are not served by a cache mount.
    assert_eq!(
        errno_of(std::fs::metadata(view.join(format!("{pid}/ctl")))),
        Some(libc::ENOENT)
    );

    // The process changes; within the bound the view may still show the old name, after it
    // the new one.
    child.exec();
    std::thread::sleep(Duration::from_millis(4100));
    assert_eq!(name(), "Name:\tsleep", "the bound was kept");
    // A process that sleeps through whole periods keeps its cached pages: the agent checked
    // its record and told the kernel nothing, so reading it again costs no READ.
    let reads = fuse_requests(&agent, "read");
    std::thread::sleep(Duration::from_millis(4100));
    assert_eq!(name(), "Name:\tsleep");
    assert_eq!(
        fuse_requests(&agent, "read"),
        reads,
        "still in the page cache"
    );

    // An exited process is gone from the view once the bound has passed.
    child.kill();
    std::thread::sleep(Duration::from_millis(4100));
    assert_eq!(errno_of(std::fs::read(&status)), Some(libc::ENOENT));
    let out = agent.cli(&["umount", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn an_idle_cache_mount_rests_and_starts_cold() {
    let agent = Agent::start();
    let view = mount_view(&agent, "idle", "cache=1000");
    let mut child = ExecOnCue::start();
    let status = child.file_in(&view, "status");
    assert_eq!(first_line(&status), "Name:\tsh");
    // Passes over every task, and refreshes of the processes that ran since the last one.
    let passes = || {
        let stats = agent.json("/v1/stats");
        stats["table"]["snapshots"].as_u64().unwrap() + stats["partial_refreshes"].as_u64().unwrap()
    };
    // In use: the ticker refreshes every half bound, to invalidate what changed. (Read on
    // meanwhile: the child's first refresh changes its record, and an inode invalidated for it
    // is stamped again only when read.)
    let before = passes();
    for _ in 0..10 {
        assert_eq!(first_line(&status), "Name:\tsh");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(passes() >= before + 2, "warm: a pass each period");
    // Asked nothing for a minute: the mount rests, and costs nothing from then on but for at
    // most one pass over every task within 10 s of its last refresh (the agent brings
    // sleepers' numbers up to date every 10 s while anyone asked for numbers in the last 10 s,
    // and cannot know that question was the last).
    std::thread::sleep(Duration::from_secs(60 + 3));
    let resting = passes();
    std::thread::sleep(Duration::from_secs(10));
    let before = passes();
    assert!(
        before <= resting + 1,
        "resting: at most one pass in the 10 s tail, {} made",
        before - resting
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(passes(), before, "idle: no pass");
    // The kernel was told to forget what it held: a change made while the mount rested shows
    // at the next read, which reaches the agent.
    child.exec();
    let reads = fuse_requests(&agent, "read");
    assert_eq!(first_line(&status), "Name:\tsleep");
    assert!(fuse_requests(&agent, "read") > reads);
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_uring_view_serves_the_same_view_over_io_uring_queues() {
    if !has_fuse_uring() {
        return;
    }
    let (agent, _) = mounted_agent();
    let uring_requests = || uring_requests(&agent);
    let before = uring_requests();
    let view = mount_view(&agent, "uring", "uring");
    let tree = Tree::new();
    let pid = tree.0.id();
    let compared = agree(&view, &agent, "ps -e -o pid,ppid,comm,stat,rss,args");
    assert!(compared >= 3, "{compared}");
    // The queues carried the requests, not /dev/fuse: at least one per process listed.
    assert!(uring_requests() >= before + compared as u64);

    // The caller's own process, and the same errnos as the fuser-served view.
    let me = std::process::id();
    assert_eq!(
        std::fs::read_link(view.join("self")).unwrap(),
        Path::new(&me.to_string())
    );
    refuses_bad_operations(&view);
    // Control files too (used in control.rs).
    assert!(names_in(&view.join(pid.to_string())).contains(&"ctl".to_string()));

    open_files_outlive_their_process(&view);

    // Unmounted by the agent, even with another mount namespace holding a copy.
    umount_while_another_namespace_holds(&agent, &view);
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn uring_with_passthrough_opens_over_the_queues_and_reads_in_the_kernel() {
    if !has_fuse_uring() {
        return;
    }
    let agent = Agent::start();
    let view = mount_view(&agent, "uring-passthrough", "uring,passthrough");
    let uring_requests = || uring_requests(&agent);
    let mut child = ExecOnCue::start();
    let status = child.file_in(&view, "status");
    let name = || first_line(&status);
    assert_eq!(name(), "Name:\tsh");
    let (opens, reads, carried) = (
        fuse_requests(&agent, "open"),
        fuse_requests(&agent, "read"),
        uring_requests(),
    );
    for _ in 0..5 {
        assert_eq!(name(), "Name:\tsh");
    }
    assert!(
        fuse_requests(&agent, "open") >= opens + 5,
        "every open renders afresh"
    );
    assert_eq!(
        fuse_requests(&agent, "read"),
        reads,
        "the kernel reads the memfd"
    );
    assert!(
        uring_requests() >= carried + 5,
        "the opens came over the queues"
    );
    // Never stale: the next open shows the exec.
    child.exec();
    eventually(5, "the new program", || {
        (name() == "Name:\tsleep").then_some(())
    });
    child.kill();
}

/// Unmounts `view` through the agent while a mount namespace made now holds a copy of it: the
/// unmount returns, the agent forgets the view, and the copy is dead rather than served on.
fn umount_while_another_namespace_holds(agent: &Agent, view: &Path) {
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "60"])
        .spawn()
        .unwrap();
    eventually(5, "the namespace", || {
        std::fs::read_to_string(format!("/proc/{}/mounts", holder.id()))
            .ok()
            .filter(|m| m.contains(view.to_str().unwrap()))
            .map(drop)
    });
    let out = agent.cli(&["umount", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8(agent.cli(&["mounts"]).stdout).unwrap();
    assert!(!list.contains(view.to_str().unwrap()), "{list}");
    let copy = format!("/proc/{}/root{}", holder.id(), view.display());
    assert_eq!(errno_of(std::fs::read_dir(copy)), Some(libc::ENOTCONN));
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, unshares a mount namespace"]
fn umount_returns_while_another_mount_namespace_holds_the_view() {
    let agent = Agent::start();
    let view = agent.dir.join("held");
    std::fs::create_dir_all(&view).unwrap();
    let out = agent.cli(&["mount", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    umount_while_another_namespace_holds(&agent, &view);
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_read_only_view_reads_and_takes_no_writes() {
    let (agent, _view) = mounted_agent();
    let tree = Tree::new();
    let pid = tree.0.id();
    for (name, options) in [("ro", "ro"), ("ro-uring", "ro,uring")] {
        let view = mount_view(&agent, name, options);
        let status = std::fs::read_to_string(view.join(format!("{pid}/status"))).unwrap();
        assert!(status.starts_with("Name:\tsleep\n"), "{options}: {status}");
        for file in ["oom_score_adj", "ctl"] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("echo 1 > {}/{pid}/{file}", view.display()))
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
                "{options}: {file}: {out:?}"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap(),
        "0\n"
    );
    assert!(
        proc_stat(pid).is_some_and(|(_, f)| f[0] != "T"),
        "not stopped"
    );
}

//! The FUSE view, through real mounts: the tools people use (procps, psmisc, psutil) must give
//! the kernel's answers when the view is bind-mounted over /proc in a private mount namespace.
//! Needs root (CI runs as root) and skips otherwise.

mod common;

use std::{
    collections::HashSet,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Agent, eventually, proc_stat};

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
/// view's output; returns how many lines were compared. Skipped: lines of the agent serving the
/// view (answering it starts and stops worker threads), and workqueue workers, whose name in
/// /proc carries the work item they run at that instant (`kworker/0:1-events`).
fn agree(view: &Path, agent: &Agent, cmd: &str) -> usize {
    let own = agent.pid().to_string();
    let own_line =
        |l: &&str| !l.split_whitespace().take(4).any(|f| f == own) && !l.contains("kworker/");
    let mut last = String::new();
    for _attempt in 0..3 {
        let before = on_kernel(cmd);
        let ours = on_view(view, cmd);
        let after = on_kernel(cmd);
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
    let state = |t: &str| t.starts_with(['R', 'S', 'D']);
    a.len() == b.len()
        && differ.len() == 1
        && state(differ[0].0)
        && state(differ[0].1)
        && differ[0].0[1..] == differ[0].1[1..]
}

fn mounted_agent() -> (Agent, PathBuf) {
    // Numbers at most 1 ms old: the comparisons read the kernel just before and after the view,
    // and a snapshot taken before the first kernel read could legitimately differ from both.
    Agent::start_with_view(&["--max-staleness-ms", "1"])
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
fn procps_psmisc_and_psutil_agree_with_the_kernel() {
    require_root!();
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

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn bad_operations_get_procfs_errnos() {
    require_root!();
    let (_agent, view) = mounted_agent();
    refuses_bad_operations(&view);
    open_files_outlive_their_process(&view);
}

/// Nothing can be made, removed, renamed or written, and names that are not there are ENOENT,
/// each with procfs's errno.
fn refuses_bad_operations(view: &Path) {
    let me = std::process::id();
    assert_eq!(
        errno_of(std::fs::create_dir(view.join("new"))),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(std::fs::File::create(view.join("new"))),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(std::fs::remove_file(view.join("uptime"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(view.join(me.to_string()))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(std::fs::rename(view.join("uptime"), view.join("x"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .open(view.join(format!("{me}/stat")))
        ),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(std::fs::read(view.join("4000000/stat"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno_of(std::fs::read(view.join("0001/stat"))),
        Some(libc::ENOENT),
        "pids are canonical"
    );
    assert_eq!(
        errno_of(std::fs::read(view.join(format!("{me}/nosuch")))),
        Some(libc::ENOENT)
    );
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
fn a_name_no_process_directory_holds_is_looked_up_once_but_pids_every_time() {
    require_root!();
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
fn a_stale_table_brings_only_the_opened_process_up_to_date() {
    require_root!();
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
fn self_resolves_to_the_calling_process_and_files_have_owners() {
    require_root!();
    let (_agent, view) = mounted_agent();
    let me = std::process::id();
    assert_eq!(
        std::fs::read_link(view.join("self")).unwrap(),
        PathBuf::from(me.to_string())
    );
    // From another thread of this process: self is still the process, thread-self the thread.
    let view2 = view.clone();
    let (tself, tid) = std::thread::spawn(move || {
        let tid = unsafe { libc::gettid() } as u32;
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
fn mounts_on_demand_with_their_own_options_and_unmount_cleanly() {
    require_root!();
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

fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup v2 mounted")
}

#[test]
fn a_killed_agents_mount_is_recovered_and_sigterm_unmounts() {
    require_root!();
    let (agent, view) = mounted_agent();
    let dir = agent.dir.clone();
    assert!(std::fs::read(view.join("uptime")).is_ok());
    agent.crash();
    // The dead mount answers ENOTCONN until someone cleans up.
    let err = std::fs::metadata(&view).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let agent = Agent::start_in(
        dir,
        format!("127.0.0.1:{}", common::free_port()),
        &["--mount", view.to_str().unwrap()],
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

fn state_of(view: &Path, pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(view.join(format!("{pid}/stat"))).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().next().map(str::to_owned)
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(data)
}

#[test]
fn a_control_command_shows_in_the_next_read_however_long_the_bound() {
    require_root!();
    // A minute's staleness: without the table knowing of the command, the view would show
    // the state from before it for that long.
    let (agent, view) = Agent::start_with_view(&["--max-staleness-ms", "60000"]);
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id();
    // (Whatever the view shows now may stay for the minute.)
    eventually(5, "child asleep", || {
        (state_of(Path::new("/proc"), pid).as_deref() == Some("S")).then_some(())
    });
    let ctl = view.join(format!("{pid}/ctl"));
    let state_over_http = || agent.json(&format!("/v1/processes/{pid}"))["state"].clone();
    write_file(&ctl, b"stop").unwrap();
    assert_eq!(state_of(&view, pid).as_deref(), Some("T"));
    assert_eq!(state_over_http(), "T");
    write_file(&ctl, b"start").unwrap();
    // Running again, or already back in its sleep.
    assert!(matches!(state_of(&view, pid).as_deref(), Some("S" | "R")));
    assert!(state_over_http() == "S" || state_over_http() == "R");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn control_files_stop_start_signal_and_read_memory_through_the_mount() {
    require_root!();
    let (_agent, view) = mounted_agent();
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import ctypes, sys, time\n\
             b = ctypes.create_string_buffer(b'bpfproc-marker-42')\n\
             print(ctypes.addressof(b), flush=True)\n\
             time.sleep(60)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: u64 = line.trim().parse().unwrap();
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    let ctl = view.join(format!("{pid}/ctl"));

    // A malformed command is EINVAL and leaves the target running.
    let err = write_file(&ctl, b"launch the missiles\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert_eq!(state_of(&view, pid).as_deref(), Some("S"));

    write_file(&ctl, b"stop\n").unwrap();
    assert_eq!(
        state_of(&view, pid).as_deref(),
        Some("T"),
        "stop returns once it is stopped"
    );
    // mem: the marker at its address, read through the view.
    use std::os::unix::fs::FileExt as _;
    let mem = std::fs::File::open(view.join(format!("{pid}/mem"))).unwrap();
    let mut buf = [0u8; 17];
    mem.read_exact_at(&mut buf, addr).unwrap();
    assert_eq!(&buf, b"bpfproc-marker-42");
    let regs = std::fs::read(view.join(format!("{pid}/regs"))).unwrap();
    assert_eq!(regs.len(), 27 * 8, "user_regs_struct");
    write_file(&ctl, b"start").unwrap();
    eventually(5, "running again", || {
        (state_of(&view, pid).as_deref() == Some("S")).then_some(())
    });

    // A caller who could not ptrace the target is refused by the kernel's permission check.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!("echo stop > {}", ctl.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert_eq!(
        state_of(&view, pid).as_deref(),
        Some("S"),
        "the target is untouched"
    );

    // A signal by name (FreeBSD), then the process is gone: ENOENT.
    write_file(&ctl, b"term").unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    eventually(5, "ENOENT", || {
        (errno_of(write_file(&ctl, b"stop")) == Some(libc::ENOENT)).then_some(())
    });
}

#[test]
fn wait_and_hang_through_the_mount() {
    require_root!();
    let (_agent, view) = mounted_agent();
    // A shell that runs a child exiting 7, then waits for a line before exec'ing sleep.
    let mut sh = Command::new("sh")
        .args(["-c", "sh -c 'exit 7'; read line; exec sleep 30"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sh.id();
    eventually(5, "shell in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    // Plan 9 wait: one record per read (a second read would block until another child exits),
    // for the child that exited 7.
    let mut buf = [0u8; 512];
    let n = std::io::Read::read(
        &mut std::fs::File::open(view.join(format!("{pid}/wait"))).unwrap(),
        &mut buf,
    )
    .unwrap();
    let record = String::from_utf8_lossy(&buf[..n]).into_owned();
    let fields: Vec<&str> = record.split_whitespace().collect();
    let child: u32 = fields[0].parse().unwrap();
    assert!(
        record
            .trim_end()
            .ends_with(&format!("'sh {child}: exit 7'")),
        "{record:?}"
    );

    // hang: the shell's exec stops the new program before its first instruction.
    write_file(&view.join(format!("{pid}/ctl")), b"hang").unwrap();
    use std::io::Write as _;
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    eventually(5, "stopped at exec", || {
        let (comm, f) = proc_stat(pid)?;
        (comm == "sleep" && f[0] == "T").then_some(())
    });
    let status = std::fs::read_to_string(view.join(format!("{pid}/status"))).unwrap();
    assert!(
        status.contains("Name:\tsleep\n") && status.contains("TracerPid:\t0\n"),
        "{status}"
    );
    sh.kill().unwrap();
    sh.wait().unwrap();
}

#[test]
fn attach_step_regs_detach_through_the_mount() {
    require_root!();
    let (_agent, view) = mounted_agent();
    // A busy loop, so a single step always moves the instruction pointer.
    let mut child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    let ctl = view.join(format!("{pid}/ctl"));
    let rip = || -> u64 {
        let regs = std::fs::read(view.join(format!("{pid}/regs"))).unwrap();
        // user_regs_struct: rip is the 17th u64.
        u64::from_ne_bytes(regs[16 * 8..17 * 8].try_into().unwrap())
    };
    write_file(&ctl, b"attach").unwrap();
    assert_eq!(
        state_of(&view, pid).as_deref(),
        Some("t"),
        "attached and stopped"
    );
    let before = rip();
    write_file(&ctl, b"step").unwrap();
    assert_ne!(rip(), before, "a single step moves rip");
    // step without being attached is refused, and the process is left alone.
    write_file(&ctl, b"detach").unwrap();
    eventually(5, "running after detach", || {
        (state_of(&view, pid).as_deref() == Some("R")).then_some(())
    });
    let err = write_file(&ctl, b"step").unwrap_err();
    assert!(err.raw_os_error().is_some(), "{err}");
    assert_eq!(state_of(&view, pid).as_deref(), Some("R"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn plan9_personality_serves_proc3_files() {
    require_root!();
    let agent = Agent::start();
    let view = agent.dir.join("plan9");
    std::fs::create_dir_all(&view).unwrap();
    let out = agent.cli(&["mount", "-o", "personality=plan9", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    eventually(5, "exec", || {
        proc_stat(pid).filter(|(c, _)| c == "sleep").map(drop)
    });
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });

    // The root holds process directories and nothing else.
    let names: Vec<String> = std::fs::read_dir(&view)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.parse::<u32>().is_ok()), "{names:?}");
    let mut files: Vec<String> = std::fs::read_dir(view.join(pid.to_string()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ctl", "mem", "note", "noteid", "notepg", "proc", "segment", "status", "text", "wait"
        ]
    );

    // status: name and user in 28 columns, state in 12, then seven 12-column numbers. (Right
    // after exec the process may still be running; wait for it to sleep.)
    let status = eventually(5, "asleep", || {
        let s = std::fs::read(view.join(format!("{pid}/status"))).ok()?;
        String::from_utf8_lossy(&s).contains("Wakeme").then_some(s)
    });
    assert_eq!(
        status.len(),
        28 + 28 + 12 + 7 * 12,
        "{:?}",
        String::from_utf8_lossy(&status)
    );
    let text = String::from_utf8(status).unwrap();
    assert!(
        text.starts_with(&format!("{:<27} {:<27} {:<11} ", "sleep", "root", "Wakeme")),
        "{text:?}"
    );
    let segment = std::fs::read_to_string(view.join(format!("{pid}/segment"))).unwrap();
    assert!(segment.lines().any(|l| l.starts_with("Text")), "{segment}");
    assert!(segment.lines().any(|l| l.starts_with("Stack")), "{segment}");
    assert!(
        std::fs::read_link(view.join(format!("{pid}/text")))
            .unwrap()
            .ends_with("sleep"),
        "text is the executable"
    );
    // Plan 9 control through the personality's ctl.
    write_file(&view.join(format!("{pid}/ctl")), b"stop").unwrap();
    // State numbers are at most the staleness bound (100 ms) old.
    eventually(5, "Stopped", || {
        let text = std::fs::read_to_string(view.join(format!("{pid}/status"))).ok()?;
        text[56..].starts_with("Stopped").then_some(())
    });
    write_file(&view.join(format!("{pid}/ctl")), b"kill").unwrap();
    child.wait().unwrap();
    assert!(
        agent
            .cli(&["umount", view.to_str().unwrap()])
            .status
            .success()
    );
}

/// FUSE requests of operation `op` the agent has answered so far.
fn fuse_requests(agent: &Agent, op: &str) -> u64 {
    agent.json("/v1/stats")["fuse_requests_by_op"][op]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn passthrough_reads_come_from_a_fresh_backing_file_and_concurrent_opens_still_work() {
    require_root!();
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

/// A shell that execs `sleep 60` when told to: a process whose status changes on cue.
struct ExecOnCue(Child);

/// The first line of the file at `path`.
fn first_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap_or_default().to_string()
}

impl ExecOnCue {
    fn start() -> Self {
        let child = Command::new("sh")
            .args(["-c", "read line; exec sleep 60"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        ExecOnCue(child)
    }

    /// `name` of this process in `view`, once the view shows the process.
    fn file_in(&self, view: &Path, name: &str) -> PathBuf {
        let path = view.join(format!("{}/{name}", self.0.id()));
        eventually(5, "the child in the view", || {
            std::fs::metadata(&path).ok().map(drop)
        });
        path
    }

    /// Tells it to exec, and waits until it sleeps in the new image.
    fn exec(&mut self) {
        use std::io::Write as _;
        writeln!(self.0.stdin.as_mut().unwrap()).unwrap();
        let pid = self.0.id();
        eventually(5, "the exec", || {
            proc_stat(pid)
                .filter(|(c, f)| c == "sleep" && f[0] == "S")
                .map(drop)
        });
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ExecOnCue {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_cache_mount_serves_repeated_reads_from_the_page_cache_within_its_bound() {
    require_root!();
    let agent = Agent::start();
    let view = agent.dir.join("cached");
    std::fs::create_dir_all(&view).unwrap();
    // A 4 s bound: long enough that the back-to-back reads below fall inside it on any machine.
    let out = agent.cli(&["mount", "-o", "cache=4000", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let mut child = ExecOnCue::start();
    let pid = child.0.id();
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
fn an_idle_cache_mount_rests_and_starts_cold() {
    require_root!();
    let agent = Agent::start();
    let view = mount_view(&agent, "idle", "cache=1000");
    let mut child = ExecOnCue::start();
    let status = child.file_in(&view, "status");
    assert_eq!(first_line(&status), "Name:\tsh");
    let passes = || {
        agent.json("/v1/stats")["table"]["snapshots"]
            .as_u64()
            .unwrap()
    };
    // In use: the ticker makes a pass every half bound, to invalidate what changed. (Read on
    // meanwhile: the child's first pass changes its record, and an inode invalidated for it
    // is stamped again only when read.)
    let before = passes();
    for _ in 0..10 {
        assert_eq!(first_line(&status), "Name:\tsh");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(passes() >= before + 2, "warm: a pass each period");
    // Asked nothing for a minute: the mount costs nothing from then on.
    std::thread::sleep(Duration::from_secs(60));
    let before = passes();
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
fn a_uring_view_serves_the_same_view_over_io_uring_queues() {
    require_root!();
    if !Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)");
        return;
    }
    let (agent, _) = mounted_agent();
    let uring_requests = || {
        agent.json("/v1/stats")["fuse_uring_requests"]
            .as_u64()
            .unwrap()
    };
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
    // No control files: the queues answer in turn and cannot leave one waiting.
    assert_eq!(
        errno_of(std::fs::metadata(view.join(format!("{pid}/ctl")))),
        Some(libc::ENOENT)
    );
    assert!(!names_in(&view.join(pid.to_string())).contains(&"ctl".to_string()));

    open_files_outlive_their_process(&view);

    // Unmounted by the agent, even with another mount namespace holding a copy.
    umount_while_another_namespace_holds(&agent, &view);
}

#[test]
fn uring_with_passthrough_opens_over_the_queues_and_reads_in_the_kernel() {
    require_root!();
    if !Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)");
        return;
    }
    let agent = Agent::start();
    let view = mount_view(&agent, "uring-passthrough", "uring,passthrough");
    let uring_requests = || {
        agent.json("/v1/stats")["fuse_uring_requests"]
            .as_u64()
            .unwrap()
    };
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
fn umount_returns_while_another_mount_namespace_holds_the_view() {
    require_root!();
    let agent = Agent::start();
    let view = agent.dir.join("held");
    std::fs::create_dir_all(&view).unwrap();
    let out = agent.cli(&["mount", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    umount_while_another_namespace_holds(&agent, &view);
}

/// Mounts a view with `options` through the CLI at a new directory of the agent's.
fn mount_view(agent: &Agent, name: &str, options: &str) -> PathBuf {
    let view = agent.dir.join(name);
    std::fs::create_dir_all(&view).unwrap();
    let out = agent.cli(&["mount", "-o", options, view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    view
}

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

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
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
fn freebsd_personality_serves_procfs5_files() {
    require_root!();
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
fn freebsd_nodes_belong_to_the_real_user_and_mem_to_kmem() {
    require_root!();
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
fn netbsd_personality_serves_mount_procfs_files() {
    require_root!();
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
fn nolinux_hides_the_netbsd_linux_nodes() {
    require_root!();
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

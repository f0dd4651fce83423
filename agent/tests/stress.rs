//! Load, faults and completeness against the real kernel: spawn storms with exact accounting,
//! a forced ring-buffer overflow and its repair, pid reuse, HTTP under wrk, FUSE readers while
//! processes churn, control writes racing exits. Needs root (CI runs as root).
//!
//! Each test has a short form, run by `cargo xtask test`, and a long one selected by
//! `BPFPROC_STRESS=1` (`cargo xtask stress`: 100,000 spawns, 60 s of wrk, …). Every test prints
//! one `FIGURES` line with what it measured.

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::{CStr, CString},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Agent, eventually, proc_stat};
use serde_json::Value;

/// The long form (`cargo xtask stress`).
fn long() -> bool {
    std::env::var_os("BPFPROC_STRESS").is_some_and(|v| v != "0")
}

fn figures(test: &str, what: std::fmt::Arguments<'_>) {
    eprintln!("FIGURES {test}: {what}");
}

/// A copy of /bin/true under its own name, so this test's processes are told apart from
/// everything else on the host (the tests of this binary run in parallel).
fn program(name: &str, from: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("bpfproc-stress-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::copy(from, &path).unwrap();
    (dir, path)
}

/// Spawns `total` short-lived runs of `prog` from `spawners` threads, each as fast as it can,
/// and returns the pids.
fn storm(prog: &Path, total: usize, spawners: usize) -> Vec<u32> {
    let handles: Vec<_> = (0..spawners)
        .map(|i| {
            let prog = prog.to_path_buf();
            let n = total / spawners + usize::from(i < total % spawners);
            std::thread::spawn(move || {
                let mut pids = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut c = Command::new(&prog)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("spawn");
                    pids.push(c.id());
                    c.wait().expect("wait");
                }
                pids
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("spawner"))
        .collect()
}

fn kernel(stats: &Value, name: &str) -> u64 {
    stats["kernel"][name].as_u64().unwrap_or(0)
}

fn drops(stats: &Value) -> u64 {
    ["ringbuf_full", "map_full", "read_error"]
        .iter()
        .map(|n| kernel(stats, n))
        .sum()
}

/// This process's children named `comm` in /v1/exited: (pid, start_ticks) → exit code (None
/// when the exit record was lost and a rescan found the process gone).
fn exited_children(agent: &Agent, comm: &str) -> Vec<((u32, u64), Option<i64>)> {
    let list = agent.json(&format!("/v1/exited?ppid={}", std::process::id()));
    list.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["comm"] == comm)
        .map(|p| {
            (
                (
                    p["pid"].as_u64().unwrap() as u32,
                    p["start_ticks"].as_u64().unwrap(),
                ),
                p["exit_code"].as_i64(),
            )
        })
        .collect()
}

fn live(agent: &Agent) -> Vec<Value> {
    agent.json("/v1/processes").as_array().unwrap().clone()
}

fn proc_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
        })
        .count()
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn exec_storm_every_process_is_seen_or_counted_lost() {
    let total = if long() { 100_000 } else { 6_000 };
    let (_dir, prog) = program("stormtrue", "/bin/true");
    let agent = Agent::start_with(&["--exited", &(total + 20_000).to_string()]);
    let before = agent.json("/v1/stats");
    let t0 = Instant::now();
    let pids = storm(&prog, total, 4);
    let took = t0.elapsed();
    assert_eq!(pids.len(), total);
    // Every spawned process is in the exited ring once, with its exit status, unless the kernel
    // side counted a lost record; wait until the agent has applied everything.
    let spawned: HashSet<u32> = pids.iter().copied().collect();
    let entries = eventually(60, "every storm process accounted for", || {
        let e = exited_children(&agent, "stormtrue");
        let stats = agent.json("/v1/stats");
        let lost_records = drops(&stats) - drops(&before);
        (e.len() == total || lost_records > 0).then_some(e)
    });
    let stats = agent.json("/v1/stats");
    let lost_records = drops(&stats) - drops(&before);
    let keys: HashSet<(u32, u64)> = entries.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys.len(), entries.len(), "a process reported twice");
    assert!(
        entries.iter().all(|((pid, _), _)| spawned.contains(pid)),
        "an exit of a process this test did not spawn"
    );
    let seen = entries.iter().filter(|(_, code)| code.is_some()).count();
    let lost_exit = entries.len() - seen;
    let unseen = total - entries.len();
    figures(
        "exec storm",
        format_args!(
            "spawned {total} in {:.1} s ({:.0}/s), seen {seen}, seen without exit status \
             {lost_exit}, never seen {unseen}, kernel-counted lost records {lost_records}",
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64()
        ),
    );
    assert!(
        entries.iter().filter_map(|(_, c)| *c).all(|c| c == 0),
        "true exits 0"
    );
    if lost_records == 0 {
        assert_eq!(
            seen, total,
            "no loss was counted, so every process must be seen"
        );
    } else {
        // Every process missing a record is explained by a counted loss.
        assert!(lost_exit + unseen <= lost_records as usize);
    }
    // The table and the kernel's process map return to the host's size: no storm process
    // stays live, and no map entry outlives its process.
    eventually(30, "the table back to the host's processes", || {
        let listed = live(&agent);
        let ghosts = listed.iter().filter(|p| p["comm"] == "stormtrue").count();
        let stats = agent.json("/v1/stats");
        let orphans = stats["bpf_map_orphans"].as_u64().unwrap();
        let (table, map, host) = (
            stats["live_processes"].as_u64().unwrap() as i64,
            stats["bpf_map_entries"].as_u64().unwrap() as i64,
            proc_count() as i64,
        );
        // Other work on the host starts and ends processes meanwhile: a few either way.
        let near = |n: i64| (n - host).abs() <= 20;
        (ghosts == 0 && orphans == 0 && near(table) && near(map)).then_some(())
    });
    let after = agent.json("/v1/stats");
    assert_eq!(
        after["map_gc_dropped"], before["map_gc_dropped"],
        "the sweep had to drop map entries the free hook left behind: {after}"
    );
    figures(
        "exec storm",
        format_args!(
            "table {} -> {}, map entries {} -> {}, map orphans {}",
            before["live_processes"],
            after["live_processes"],
            before["bpf_map_entries"],
            after["bpf_map_entries"],
            after["bpf_map_orphans"]
        ),
    );
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_tiny_ring_buffer_counts_its_losses_and_a_rescan_repairs_the_table() {
    let total = if long() { 100_000 } else { 4_000 };
    let (_dir, prog) = program("tinytrue", "/bin/true");
    // One page of ring buffer, drained rarely: records are lost under any storm.
    let agent = Agent::start_with(&[
        "--ringbuf-bytes",
        "4096",
        "--drain-ms",
        "200",
        "--exited",
        &(total + 20_000).to_string(),
    ]);
    let before = agent.json("/v1/stats");
    // Long-lived processes started during the storm: the repaired table must have them all.
    let stop = Arc::new(AtomicBool::new(false));
    let sleepers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) && v.len() < 200 {
                v.push(
                    Command::new("sleep")
                        .arg("120")
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("sleep"),
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            v
        })
    };
    let pids = storm(&prog, total, 4);
    stop.store(true, Ordering::Relaxed);
    let mut sleepers = sleepers.join().unwrap();
    let stats = eventually(30, "the losses counted and a rescan", || {
        let s = agent.json("/v1/stats");
        (kernel(&s, "ringbuf_full") > kernel(&before, "ringbuf_full")
            && s["rescans"].as_u64() > before["rescans"].as_u64())
        .then_some(s)
    });
    // The loss is exported by cause on /metrics as well.
    let metrics = String::from_utf8(agent.get("/metrics").1).unwrap();
    let exported: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bpfproc_events_lost_total{cause=\"ringbuf_full\"} "))
        .and_then(|v| v.parse().ok())
        .expect("bpfproc_events_lost_total{cause=\"ringbuf_full\"}");
    assert!(exported >= kernel(&stats, "ringbuf_full") as f64);
    // Repaired: every sleeper is listed (with its identity), and no storm process is left live.
    let want: HashSet<u64> = sleepers.iter().map(|c| u64::from(c.id())).collect();
    let mut last = String::new();
    let repaired = (0..300).any(|_| {
        let listed = live(&agent);
        let pids: HashSet<u64> = listed
            .iter()
            // With its own name: a lost exec record must not leave the parent's. (Its argv can
            // still be the parent's when the exec record was lost but the rename record of the
            // same exec arrived: docs/security.md, known gaps.)
            .filter(|p| p["comm"] == "sleep")
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        let missing: Vec<_> = want
            .difference(&pids)
            .map(|m| {
                let entry = listed.iter().find(|p| p["pid"].as_u64() == Some(*m));
                (
                    m,
                    entry.map(|e| (e["comm"].clone(), e["cmdline"].clone(), e["origin"].clone())),
                )
            })
            .collect();
        let ghosts: Vec<_> = listed.iter().filter(|p| p["comm"] == "tinytrue").collect();
        last = format!("missing sleepers {missing:?}, storm processes still listed {ghosts:?}");
        let done = missing.is_empty() && ghosts.is_empty();
        if !done {
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    });
    assert!(
        repaired,
        "not repaired: {last}\n{}",
        agent.json("/v1/stats")
    );
    // No ghosts anywhere: every listed process exists in the kernel with the same start.
    eventually(30, "no ghosts", || {
        let ghosts: Vec<u64> = live(&agent)
            .iter()
            .filter_map(|p| {
                let pid = p["pid"].as_u64()? as u32;
                let start = p["start_ticks"].as_u64()?;
                let alive = proc_stat(pid)
                    .and_then(|(_, f)| f.get(19).and_then(|s| s.parse::<u64>().ok()))
                    == Some(start);
                (!alive).then_some(u64::from(pid))
            })
            .collect();
        // A process can end between the listing and the check: retry until a clean pass.
        ghosts.is_empty().then_some(())
    });
    let stats = agent.json("/v1/stats");
    let entries = exited_children(&agent, "tinytrue");
    let seen = entries.iter().filter(|(_, c)| c.is_some()).count();
    let lost_exit = entries.len() - seen;
    let unseen = total - entries.len();
    let lost_records = drops(&stats) - drops(&before);
    figures(
        "tiny ring",
        format_args!(
            "spawned {total}: seen {seen}, seen without exit status {lost_exit}, never seen \
             {unseen}; lost records by cause: ringbuf_full {} map_full {} read_error {}; rescans \
             {}; found by rescan {}, lost exits {}; {} sleepers all listed, no ghosts",
            kernel(&stats, "ringbuf_full") - kernel(&before, "ringbuf_full"),
            kernel(&stats, "map_full") - kernel(&before, "map_full"),
            kernel(&stats, "read_error") - kernel(&before, "read_error"),
            stats["rescans"],
            stats["table"]["found_by_rescan"],
            stats["table"]["lost_exits"],
            want.len()
        ),
    );
    assert!(entries.iter().all(|((p, _), _)| pids.contains(p)));
    assert!(
        lost_exit + unseen <= lost_records as usize,
        "{} processes lack a record but only {lost_records} losses were counted",
        lost_exit + unseen
    );
    for c in &mut sleepers {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `n` processes that only sleep (xtask/c/tiny.c, built static: a few pages each, so the long
/// form's 100,000 fit), one process group, killed when dropped; with `kernel.pid_max` and
/// `kernel.threads-max` raised for them if need be, and put back.
struct Crowd {
    leader: std::process::Child,
    sysctls: Vec<(&'static str, String)>,
}

impl Crowd {
    fn spawn(n: usize) -> Crowd {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("bpfproc-crowd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("crowd");
        let cc = Command::new("cc")
            .args(["-static", "-Os", "-o"])
            .arg(&bin)
            .arg(root.join("xtask/c/tiny.c"))
            .output()
            .expect("a C compiler (cc): cargo xtask setup installs gcc");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let mut sysctls = Vec::new();
        let want = (n as u64 * 2).max(65_536);
        for path in ["/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"] {
            let was = std::fs::read_to_string(path).unwrap();
            if was.trim().parse::<u64>().unwrap_or(0) < want {
                std::fs::write(path, want.to_string()).unwrap();
                sysctls.push((path, was));
            }
        }
        let mut leader = Command::new(&bin)
            .arg(n.to_string())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "the crowd of {n} did not start");
        Crowd { leader, sysctls }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        common::kill_group(self.leader.id(), 9);
        let _ = self.leader.wait();
        for (path, was) in &self.sysctls {
            let _ = std::fs::write(path, was.trim());
        }
    }
}

/// On a host crowded with sleeping processes (100,000 in the long form, 2,000 in the short):
/// the agent lists every one, a storm of short-lived processes on top is seen whole with every
/// exit status, and listings and scrapes asked meanwhile are answered from refreshes of what
/// ran (issue 21).
#[test]
#[ignore = "needs root: loads BPF programs, raises pid_max in the long form"]
fn a_storm_on_a_crowded_host_loses_nothing() {
    let (crowd_size, total) = if long() {
        (100_000, 20_000)
    } else {
        (2_000, 2_000)
    };
    let crowd = Crowd::spawn(crowd_size);
    let (_dir, prog) = program("crowdtrue", "/bin/true");
    let t0 = Instant::now();
    let agent = Agent::start_with(&["--exited", &(total + 20_000).to_string()]);
    let want = crowd_size as u64;
    let crowd_listed = |agent: &Agent| {
        live(agent)
            .iter()
            .filter(|p| p["ppid"].as_u64() == Some(u64::from(crowd.leader.id())))
            .count() as u64
            + 1
    };
    let host = proc_count() as u64;
    eventually(60, "as many processes listed as the host has", || {
        let listed = agent.json("/v1/stats")["live_processes"].as_u64()?;
        (listed + 50 >= host).then_some(())
    });
    let listed_after = t0.elapsed();
    assert_eq!(
        crowd_listed(&agent),
        want,
        "every process of the crowd listed"
    );
    let before = agent.json("/v1/stats");
    // A dashboard and a Prometheus polling throughout the storm.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, answers, addr) = (stop.clone(), answers.clone(), agent.addr.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                for path in ["/v1/processes", "/metrics"] {
                    let t = Instant::now();
                    let (status, _) = common::get(&addr, path);
                    assert_eq!(status, 200, "{path} during the storm");
                    worst = worst.max(t.elapsed());
                    answers.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            worst
        })
    };
    let t1 = Instant::now();
    let pids = storm(&prog, total, 4);
    let took = t1.elapsed();
    let spawned: HashSet<u32> = pids.iter().copied().collect();
    let entries = eventually(120, "every storm process in /v1/exited", || {
        let e = exited_children(&agent, "crowdtrue");
        (e.len() >= total).then_some(e)
    });
    stop.store(true, Ordering::Relaxed);
    let worst = poller.join().expect("the poller");
    let stats = agent.json("/v1/stats");
    assert!(
        entries
            .iter()
            .all(|((pid, _), code)| spawned.contains(pid) && *code == Some(0)),
        "every storm process once, with its exit status"
    );
    assert_eq!(entries.len(), total);
    assert_eq!(drops(&stats), drops(&before), "losses counted: {stats}");
    assert_eq!(
        crowd_listed(&agent),
        want,
        "the crowd is still listed whole"
    );
    let partial = |s: &Value| s["partial_refreshes"].as_u64().unwrap();
    assert!(
        partial(&stats) > partial(&before),
        "listings during the storm read what ran: {stats}"
    );
    let rss = common::rss_kib(agent.pid());
    figures(
        "crowded storm",
        format_args!(
            "{crowd_size} sleeping: all listed {:.2} s after the agent's start; {total} spawned in \
             {:.1} s ({:.0}/s), all seen with exit 0, 0 lost; {} listings and scrapes meanwhile \
             (slowest {:.0} ms), {} refreshes of what ran and {} passes in all; agent RSS {} MB",
            listed_after.as_secs_f64(),
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64(),
            answers.load(Ordering::Relaxed),
            worst.as_secs_f64() * 1e3,
            partial(&stats),
            stats["table"]["snapshots"],
            rss / 1024
        ),
    );
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Starts `argv` with environment `env` as uid and gid `id`, at exactly pid `pid` (clone3's
/// set_tid, root only): how a test reuses a pid on purpose instead of cycling through the
/// whole pid space. Err(errno), EEXIST when the pid is taken.
fn spawn_at(pid: u32, path: &CStr, argv: &[CString], env: &[CString], id: u32) -> Result<u32, i32> {
    let argv: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: a fork-like clone3 (no CLONE_VM); the child calls only async-signal-safe
    // functions on memory prepared before the call, then execs or exits.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args, size_of::<CloneArgs>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    if r == 0 {
        // Raw system calls only: glibc's setgroups/setresuid/setresgid broadcast the change to
        // every thread the parent had (nptl's setxid), under a lock another test thread may
        // have held at the clone, and the child, alone, would wait on it for ever (seen here:
        // the first process never exec'd, parked in a futex wait).
        // SAFETY: see above.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            libc::syscall(libc::SYS_setresgid, id, id, id);
            libc::syscall(libc::SYS_setresuid, id, id, id);
            libc::syscall(
                libc::SYS_execve,
                path.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
            );
            libc::syscall(libc::SYS_exit_group, 127);
        }
    }
    Ok(r as u32)
}

fn reap(pid: u32) {
    common::kill(pid, libc::SIGKILL);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
}

fn cstrings(v: &[&str]) -> Vec<CString> {
    v.iter().map(|s| CString::new(*s).unwrap()).collect()
}

/// Lines of `text` naming `pid` in a per-pid metric.
fn pid_series(metrics: &str, pid: u32) -> Vec<String> {
    let label = format!("pid=\"{pid}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("bpfproc_pid_") && l.contains(&label))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, picks pids (clone3 set_tid)"]
fn a_reused_pid_never_shows_the_previous_process() {
    let rounds = if long() { 500 } else { 20 };
    let (agent, view) =
        Agent::start_with_view(&["--metrics-per-pid", "--metrics-per-pid-max", "100000"]);
    let (_pdir, second) = program("second-sleep", "/bin/sleep");
    let first = CString::new("/bin/sleep").unwrap();
    let second_c = CString::new(second.as_os_str().as_bytes()).unwrap();
    let mut reused = 0;
    let mut checks = 0u64;
    for round in 0..rounds {
        // A pid that was just freed: take one from a process that has ended.
        let (pid, a) = loop {
            let mut c = Command::new("true").spawn().unwrap();
            let p = c.id();
            c.wait().unwrap();
            // The marker is argv[0]: sleep takes only durations as arguments.
            let a_argv = cstrings(&[&format!("first-{round}"), "60"]);
            let a_env = cstrings(&[&format!("BPFPROC_REUSE=first-{round}")]);
            match spawn_at(p, &first, &a_argv, &a_env, 0) {
                Ok(a) => break (p, a),
                Err(libc::EEXIST) => continue,
                Err(e) => panic!("clone3 set_tid: errno {e}"),
            }
        };
        assert_eq!(a, pid);
        // The first process, fully known everywhere.
        let a_args = format!("first-{round}");
        eventually(10, "the first process in the API", || {
            let (code, body) = agent.get(&format!("/v1/processes/{pid}"));
            let v: Value = serde_json::from_slice(&body).ok()?;
            (code == 200 && v["cmdline"][0] == a_args.as_str()).then_some(())
        });
        let environ = std::fs::read(view.join(format!("{pid}/environ"))).unwrap();
        assert!(String::from_utf8_lossy(&environ).contains(&a_args));
        // A file opened now keeps what it showed at open, whatever happens to the pid.
        let held = std::fs::File::open(view.join(format!("{pid}/cmdline"))).unwrap();
        reap(pid);

        // The second process, at the same pid, another program, user and environment.
        let b_args = format!("second-{round}");
        let b_argv = cstrings(&[&b_args, "61"]);
        let b_env = cstrings(&[&format!("BPFPROC_REUSE={b_args}")]);
        let b = spawn_at(pid, &second_c, &b_argv, &b_env, 65534)
            .unwrap_or_else(|e| panic!("pid {pid} reused by someone else first: errno {e}"));
        assert_eq!(b, pid);
        reused += 1;
        // Asleep, not just renamed: the kernel sets the new name in the middle of exec, before
        // the exec tracepoint fires, and until then the agent rightly has the old argv.
        eventually(10, "the second process to exec", || {
            proc_stat(pid)
                .filter(|(c, f)| c == "second-sleep" && f[0] == "S")
                .map(drop)
        });
        // From here on, every interface shows the second process, never the first.
        let one = agent.json(&format!("/v1/processes/{pid}"));
        assert_eq!(one["comm"], "second-sleep", "{one}");
        assert_eq!(one["uid"], 65534, "{one}");
        assert_eq!(one["cmdline"][0], b_args.as_str(), "{one}");
        let status =
            String::from_utf8(agent.get(&format!("/v1/processes/{pid}/status")).1).unwrap();
        assert!(status.starts_with("Name:\tsecond-sleep\n"), "{status}");
        assert!(
            status.contains("Uid:\t65534\t65534\t65534\t65534\n"),
            "{status}"
        );
        let cmdline =
            String::from_utf8(agent.get(&format!("/v1/processes/{pid}/cmdline")).1).unwrap();
        assert!(
            cmdline.contains(&b_args) && !cmdline.contains(&a_args),
            "{cmdline:?}"
        );
        for file in ["cmdline", "status", "environ", "stat"] {
            let text = std::fs::read(view.join(format!("{pid}/{file}"))).unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(
                !text.contains(&a_args),
                "view {file} shows the first process: {text}"
            );
            checks += 1;
        }
        let environ = std::fs::read(view.join(format!("{pid}/environ"))).unwrap();
        assert!(String::from_utf8_lossy(&environ).contains(&b_args));
        let mut old = String::new();
        std::io::Read::read_to_string(&mut &held, &mut old).unwrap();
        assert!(
            old.contains(&a_args),
            "an open file keeps its snapshot: {old:?}"
        );
        if round % 10 == 0 {
            let metrics = String::from_utf8(agent.get("/metrics").1).unwrap();
            let series = pid_series(&metrics, pid);
            assert!(
                series.iter().all(|l| l.contains("comm=\"second-sleep\"")),
                "{series:?}"
            );
            checks += 1;
        }
        // The first process is in the exited list, with the signal that ended it.
        let gone = agent.json(&format!("/v1/exited?pid={pid}"));
        assert!(
            gone.as_array()
                .unwrap()
                .iter()
                .any(|p| p["cmdline"][0] == a_args.as_str() && p["signal"] == 9),
            "{gone}"
        );
        checks += 5;
        reap(pid);
    }
    figures(
        "pid reuse",
        format_args!(
            "{reused} pids reused (clone3 set_tid), {checks} checks over API, FUSE and \
             metrics: the previous process was never shown"
        ),
    );
}

fn wrk(addr: &str, secs: u64, script: &Path) -> (u64, u64, u64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "--timeout", "10s"])
        .arg(format!("-d{secs}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}"))
        .output()
        .expect("wrk (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let num_before = |marker: &str| -> Option<u64> {
        let i = text.find(marker)?;
        text[..i].split_whitespace().last()?.parse().ok()
    };
    let requests = num_before(" requests in").expect("request count");
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors: "))
        .map(|l| {
            l.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    (requests, non2xx, socket, text)
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn http_under_load_answers_every_request_in_bounded_memory() {
    let secs = if long() { 60 } else { 4 };
    let agent = Agent::start();
    let me = std::process::id();
    let them = agent.pid();
    let script = agent.dir.join("mix.lua");
    // The mix the issue names: listings, scrapes and per-pid files, round robin.
    std::fs::write(
        &script,
        format!(
            r#"local paths = {{"/v1/processes", "/metrics", "/v1/processes/{me}/stat",
  "/v1/processes/{them}/status", "/v1/processes/{me}/cmdline", "/v1/processes/1",
  "/v1/processes?comm=sleep", "/v1/stats", "/v1/exited"}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"#
        ),
    )
    .unwrap();
    // A warm-up round sizes the caches; the measured round must not grow memory past it.
    let (warm_requests, warm_bad, warm_sock, _) = wrk(&agent.addr, secs.min(5), &script);
    let rss_warm = common::rss_kib(them);
    let (requests, non2xx, socket_errors, text) = wrk(&agent.addr, secs, &script);
    let rss_after = common::rss_kib(them);
    figures(
        "http load",
        format_args!(
            "{requests} requests in {secs} s ({:.0}/s), {non2xx} non-2xx, {socket_errors} socket \
             errors (warm-up: {warm_requests} requests, {warm_bad} non-2xx, {warm_sock} socket \
             errors); agent RSS {rss_warm} KiB after warm-up, {rss_after} KiB after",
            requests as f64 / secs as f64
        ),
    );
    assert_eq!(warm_bad + non2xx, 0, "{text}");
    assert_eq!(warm_sock + socket_errors, 0, "{text}");
    assert!(requests > 0);
    assert!(
        rss_after <= rss_warm * 2 + 32 * 1024,
        "memory grew from {rss_warm} KiB to {rss_after} KiB"
    );
    assert_eq!(agent.get("/healthz").0, 200);
}

/// What a reader may meet for a process that is exiting: it is gone (ENOENT, ESRCH).
fn allowed(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ESRCH)
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Link,
    List,
}

fn op(o: Op, path: &Path) -> std::io::Result<()> {
    match o {
        Op::Read => std::fs::read(path).map(drop),
        Op::Link => std::fs::read_link(path).map(drop),
        Op::List => std::fs::read_dir(path).map(drop),
    }
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn fuse_readers_walking_while_processes_churn_see_only_enoent() {
    let (secs, walkers) = (if long() { 60 } else { 5 }, 8);
    let (agent, view) = Agent::start_with_view(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicU64::new(0));
    let churn: Vec<_> = (0..2)
        .map(|_| {
            let (stop, spawned) = (stop.clone(), spawned.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = Command::new("sh")
                        .args(["-c", "sleep 0.0$$ 2>/dev/null; exit 3"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("sh");
                    c.wait().expect("wait");
                    spawned.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..walkers {
        let (view, tx) = (view.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut enoent = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            // An error the kernel's own /proc gives root for the same access is parity, not a
            // fault (pid 1 of a sandbox whose init is out of reach refuses environ even to
            // root).
            let mut note = |o: Op, pid: &str, rel: &str| {
                let Err(e) = op(o, &view.join(pid).join(rel)) else {
                    reads += 1;
                    return;
                };
                let errno = e.raw_os_error();
                if errno.is_some_and(allowed) {
                    enoent += 1;
                } else if op(o, &Path::new("/proc").join(pid).join(rel))
                    .err()
                    .and_then(|k| k.raw_os_error())
                    == errno
                {
                    reads += 1;
                } else {
                    *errors.entry(format!("{rel}: {e}")).or_default() += 1;
                }
            };
            while Instant::now() < deadline {
                let rd = std::fs::read_dir(&view).expect("readdir of the view's root");
                for e in rd.flatten() {
                    let name = e.file_name();
                    let Some(pid) = name.to_str().filter(|n| n.parse::<u32>().is_ok()) else {
                        continue;
                    };
                    for f in [
                        "stat",
                        "status",
                        "statm",
                        "cmdline",
                        "comm",
                        "limits",
                        "maps",
                        "environ",
                        "io",
                        "cgroup",
                        "wchan",
                        "oom_score",
                        "loginuid",
                    ] {
                        note(Op::Read, pid, f);
                    }
                    for l in ["cwd", "root"] {
                        note(Op::Link, pid, l);
                    }
                    note(Op::List, pid, "fd");
                    if let Ok(tasks) = std::fs::read_dir(e.path().join("task")) {
                        for t in tasks.flatten() {
                            let tid = t.file_name().to_string_lossy().into_owned();
                            note(Op::Read, pid, &format!("task/{tid}/stat"));
                        }
                    }
                }
            }
            let _ = tx.send((reads, enoent, errors));
        });
    }
    drop(tx);
    let mut totals = (0u64, 0u64, BTreeMap::<String, u64>::new());
    for _ in 0..walkers {
        // A walker that does not come back long after its deadline is hung in the mount.
        let (r, n, errs) = rx
            .recv_timeout(Duration::from_secs(secs + 120))
            .expect("a FUSE walker hung");
        totals.0 += r;
        totals.1 += n;
        for (k, v) in errs {
            *totals.2.entry(k).or_default() += v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in churn {
        c.join().unwrap();
    }
    figures(
        "fuse walkers",
        format_args!(
            "{walkers} walkers for {secs} s: {} reads, {} ENOENT/ESRCH, other errors {:?}; {} \
             processes churned",
            totals.0,
            totals.1,
            totals.2,
            spawned.load(Ordering::Relaxed)
        ),
    );
    assert!(
        totals.2.is_empty(),
        "errors other than ENOENT: {:?}",
        totals.2
    );
    assert!(totals.0 > 0);
    assert_eq!(agent.get("/healthz").0, 200);
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn ctl_writes_racing_exit_get_enoent_and_never_crash_the_agent() {
    let n = if long() { 2_000 } else { 150 };
    let (agent, view) = Agent::start_with_view(&[]);
    let token = agent.token();
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    let commands = [
        "stop", "start", "attach", "detach", "cont", "waitstop", "hang", "nohang",
    ];
    for i in 0..n {
        // Exits on its own within a few milliseconds, whatever is done to it meanwhile.
        let mut child = Command::new("sleep")
            .arg(format!("0.00{}", i % 10))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let ctl = view.join(format!("{pid}/ctl"));
        let addr = agent.addr.clone();
        let token = token.clone();
        let http = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for cmd in commands.iter().cycle().take(16) {
                let (code, _) = common::post(
                    &addr,
                    &format!("/v1/processes/{pid}/ctl"),
                    cmd,
                    Some(&token),
                );
                seen.push(format!("http {code}"));
                if code == 404 {
                    break;
                }
            }
            seen
        });
        for cmd in commands.iter().cycle().take(16) {
            let r = std::fs::OpenOptions::new()
                .write(true)
                .open(&ctl)
                .and_then(|mut f| std::io::Write::write_all(&mut f, cmd.as_bytes()));
            let key = match r {
                Ok(()) => "fuse ok".to_string(),
                Err(e) => format!("fuse errno {}", e.raw_os_error().unwrap_or(0)),
            };
            let gone = key == format!("fuse errno {}", libc::ENOENT);
            *outcomes.entry(key).or_default() += 1;
            if gone {
                break;
            }
        }
        for k in http.join().unwrap() {
            *outcomes.entry(k).or_default() += 1;
        }
        // Whatever state the commands left it in, it must still be able to end.
        common::kill(pid, libc::SIGKILL);
        child.wait().unwrap();
    }
    figures(
        "ctl racing exit",
        format_args!("{n} processes, outcomes {outcomes:?}"),
    );
    // ok, ENOENT/ESRCH (gone), EBUSY (wrong state: start of a running process, detach of an
    // untraced one); over HTTP the same as 200, 404 and 409.
    let fine = [
        "fuse ok".to_string(),
        format!("fuse errno {}", libc::ENOENT),
        format!("fuse errno {}", libc::ESRCH),
        format!("fuse errno {}", libc::EBUSY),
        "http 200".into(),
        "http 404".into(),
        "http 409".into(),
    ];
    let odd: Vec<_> = outcomes.keys().filter(|k| !fine.contains(k)).collect();
    assert!(
        odd.is_empty(),
        "unexpected outcomes {odd:?} in {outcomes:?}"
    );
    assert_eq!(agent.get("/healthz").0, 200);
    // The control thread is not wedged: a fresh process can still be stopped and killed.
    let mut c = Command::new("sleep").arg("30").spawn().unwrap();
    eventually(5, "exec", || {
        proc_stat(c.id()).filter(|(s, _)| s == "sleep").map(drop)
    });
    assert_eq!(agent.ctl(c.id(), "stop").0, 200);
    assert_eq!(agent.ctl(c.id(), "kill").0, 200);
    c.wait().unwrap();
}

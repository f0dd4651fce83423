//! A view outlives its agent: killed and restarted, or replaced by `--takeover`, the next
//! agent serves the same mount (no remount), so a namespace that bind-mounted the view over
//! its /proc never sees ENOTCONN. Needs root: `#[ignore]`d otherwise.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use common::{Agent, ExecOnCue, eventually, proc_stat};

/// `ps -e` in a loop on the view bind-mounted over /proc of a private mount namespace; each
/// run appends `ok` or `fail <its error>` to a log.
struct PsLoop {
    child: Child,
    log: PathBuf,
}

impl PsLoop {
    fn start(view: &Path, log: PathBuf) -> Self {
        let script = format!(
            "mount --bind {} /proc || exit 1; \
             while :; do \
               if err=$(ps -e 2>&1 >/dev/null); then echo ok; else echo \"fail $err\"; fi; \
             done",
            view.display()
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let ps = Self { child, log };
        eventually(10, "ps running on the view", || {
            ps.oks_after(0).then_some(())
        });
        ps
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Whether a run after the first `n` lines worked.
    fn oks_after(&self, n: usize) -> bool {
        self.lines().iter().skip(n).any(|l| l == "ok")
    }

    /// Every failed run so far.
    fn failures(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with("fail"))
            .collect()
    }
}

impl Drop for PsLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After a new agent's health check: the loop's runs from then on work.
fn works_again(ps: &PsLoop) {
    let seen = ps.lines().len();
    eventually(10, "ps working on the view again", || {
        ps.oks_after(seen).then_some(())
    });
}

/// `stop` and `start` written to the view's ctl file of a `sleep` take effect.
fn ctl_works(view: &Path) {
    let mut sleeper = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = sleeper.id();
    let ctl = view.join(pid.to_string()).join("ctl");
    eventually(5, "the sleeper in the view", || ctl.exists().then_some(()));
    std::fs::write(&ctl, "stop").expect("ctl stop");
    let state = |pid: u32| proc_stat(pid).and_then(|(_, f)| f.first().cloned());
    eventually(5, "the sleeper stopped", || {
        (state(pid).as_deref() == Some("T")).then_some(())
    });
    std::fs::write(&ctl, "start").expect("ctl start");
    eventually(5, "the sleeper running", || {
        (state(pid).as_deref() != Some("T")).then_some(())
    });
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

fn addr() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, unshares a mount namespace"]
fn a_view_over_proc_outlives_a_killed_agent_and_a_takeover_without_enotconn() {
    let (agent, view) = Agent::start_with_view(&[]);
    let dir = agent.dir.clone();
    let mount = ["--mount", view.to_str().unwrap()];
    let ps = PsLoop::start(&view, dir.join("ps.log"));

    // Killed: no clean-up at all. The keeper holds the connection; the next agent started
    // with the same command serves it.
    agent.crash();
    let agent = Agent::start_in(dir.clone(), addr(), &mount);
    works_again(&ps);
    ctl_works(&view);

    // A planned upgrade: the new agent attaches and backfills, then takes the view over, and
    // the old one exits by itself (cleanly).
    let old = agent;
    let takeover: Vec<&str> = ["--takeover"].iter().chain(&mount).copied().collect();
    let agent = Agent::start_in(dir.clone(), addr(), &takeover);
    let status = old.stop();
    assert!(status.success(), "the old agent: {status}");
    works_again(&ps);
    ctl_works(&view);

    let failures = ps.failures();
    assert!(failures.is_empty(), "ps failed on the view: {failures:?}");
    drop(ps);
    // A plain stop still unmounts the view and lets the keeper go.
    let status = agent.stop();
    assert!(status.success(), "{status}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(view.to_str().unwrap()),
        "SIGTERM left the view mounted"
    );
    let keeper = bpfproc::sys::fdstore::keeper_path(&dir.join("bpfproc.sock"));
    eventually(5, "the keeper gone", || (!keeper.exists()).then_some(()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_request_waiting_through_the_gap_is_answered_by_the_next_agent() {
    let (agent, view) = Agent::start_with_view(&[]);
    let dir = agent.dir.clone();
    agent.crash();
    // Nobody serves the view now: this read waits in the kernel's queue, neither failing nor
    // answered, until the next agent reads it.
    let file = view.join("uptime");
    let reader = std::thread::spawn(move || std::fs::read(file));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !reader.is_finished(),
        "a request failed or was answered with no agent"
    );
    let _agent = Agent::start_in(dir, addr(), &["--mount", view.to_str().unwrap()]);
    let text = reader
        .join()
        .unwrap()
        .expect("the waiting read is answered");
    assert!(!text.is_empty());
}

/// Whether `pid` is stopped, untraced, in a new image of `sleep`: stopped at its exec by its
/// hang bit.
fn stopped_at_exec(pid: u32) -> bool {
    let Some((comm, f)) = proc_stat(pid) else {
        return false;
    };
    let tracer = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .map(|t| t.trim().to_string())
        });
    comm == "sleep" && f[0] == "T" && tracer.as_deref() == Some("0")
}

/// When `pid` started, in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid)?.1.get(19)?.parse().ok()
}

/// An `ExecOnCue` at `pid` (which its process has left) that started later than `ticks`: the
/// pid reused by another process. The next pid is set through `ns_last_pid`, again as long as
/// another process on the host takes it first.
fn reuse_pid(pid: u32, ticks: u64) -> ExecOnCue {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing ns_last_pid");
        let child = ExecOnCue::command().spawn().expect("sh");
        let at = child.id();
        // Dropped (killed) unless it is the one.
        let child = ExecOnCue::ready(child);
        if at == pid && start_ticks(pid).is_some_and(|t| t > ticks) {
            return child;
        }
        drop(child);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("could not start a process at pid {pid}");
}

#[test]
#[ignore = "needs root: loads BPF programs, sets ns_last_pid"]
fn hang_bits_outlive_a_killed_agent_and_a_takeover_but_never_go_to_a_reused_pid() {
    let agent = Agent::start();
    let dir = agent.dir.clone();
    let mut kept = ExecOnCue::start();
    let mut gone = ExecOnCue::start();
    for pid in [kept.pid(), gone.pid()] {
        let (status, body) = agent.ctl(pid, "hang");
        assert_eq!(status, 200, "{body}");
    }

    // Killed. While no agent runs, `gone` ends and another process gets its pid: the bit kept
    // for `gone` is not that process's.
    agent.crash();
    let pid = gone.pid();
    let ticks = start_ticks(pid).expect("gone's start");
    gone.kill();
    let mut other = reuse_pid(pid, ticks);
    let agent = Agent::start_in(dir.clone(), addr(), &[]);
    kept.cue();
    eventually(10, "the hung process stopped at its exec", || {
        stopped_at_exec(kept.pid()).then_some(())
    });
    other.cue();
    eventually(
        10,
        "the process at the reused pid running its new image",
        || {
            proc_stat(pid)
                .filter(|(c, f)| c == "sleep" && f[0] == "S")
                .map(drop)
        },
    );

    // Replaced by `--takeover`: the new agent takes the bits from the old one's map.
    let mut next = ExecOnCue::start();
    let (status, body) = agent.ctl(next.pid(), "hang");
    assert_eq!(status, 200, "{body}");
    let old = agent;
    let agent = Agent::start_in(dir.clone(), addr(), &["--takeover"]);
    let status = old.stop();
    assert!(status.success(), "the old agent: {status}");
    next.cue();
    eventually(
        10,
        "the hung process stopped at its exec after the takeover",
        || stopped_at_exec(next.pid()).then_some(()),
    );
    let stats = agent.json("/v1/stats");
    assert!(
        stats["kernel"]["hang_stops"].as_u64().unwrap() >= 1,
        "the new agent's program stopped it: {stats}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_systemd_unit_keeps_the_views_connections_in_its_store() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/systemd/bpfproc.service"
    ))
    .unwrap();
    let set = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    let max: u32 = set("FileDescriptorStoreMax")
        .expect("FileDescriptorStoreMax=")
        .parse()
        .unwrap();
    assert!(max as usize >= bpfproc::sys::fdstore::MAX_FDS);
    // systemd takes FDSTORE=1 from the main process only when told to listen to it.
    assert_eq!(set("NotifyAccess").as_deref(), Some("main"));
}
